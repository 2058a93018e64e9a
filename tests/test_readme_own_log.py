"""The "Your own log" walkthrough of docs/guides/own-log.md runs as written, in order, in a fresh
folder (shorter: the test simulator preset and a two-step run), then the page's Python block, which
reads the export the commands made (tests/test_docs_examples.py leaves that block to this test)."""

from __future__ import annotations

import pathlib
import re
import shlex

from genrank_jax.cli import main

ROOT = pathlib.Path(__file__).resolve().parents[1]


PAGE = "docs/guides/own-log.md"


def section() -> str:
    return (ROOT / PAGE).read_text().split("## Your own log", 1)[1].split("\n## ", 1)[0]


def test_walkthrough_runs_in_a_fresh_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GENRANK_TFDS_DIR", str(tmp_path / "tfds"))
    (commands,) = re.findall(r"```bash\n(.*?)```", section(), re.S)
    lines = [line.split("#", 1)[0].strip() for line in commands.strip().splitlines()]
    assert [line.split()[:2] for line in lines] == [["genrank-jax", "simulate"], ["genrank-jax", "train"],
                                                     ["genrank-jax", "export"]]
    faster = {"simulate": ["--preset", "tests"], "train": ["--steps", "2", "--validation-fraction", "0",
                                                           "--no-progress"], "export": []}
    for line in lines:
        argv = shlex.split(line)[1:]
        argv = [("2" if a == "200" else a) for a in argv] + faster[argv[0]]
        assert main(argv) == 0, line
    (code,) = re.findall(r"```python\n(.*?)```", section(), re.S)
    exec(compile(code, f"{PAGE} example", "exec"), {})
    printed = capsys.readouterr().out.strip().splitlines()[-2:]
    assert re.fullmatch(r"\[\s*\d+\s+\d+\s+\d+\]", printed[0]) and re.fullmatch(r"\[\s*\d+\]", printed[1])


def test_schema_example_is_a_valid_schema(tmp_path):
    import tomllib

    from genrank_jax.data.own_log.schema import schema_from_dict

    (example,) = re.findall(r"```toml\n(.*?)```", section(), re.S)
    schema = schema_from_dict(tomllib.loads(example), tmp_path / "schema.toml")
    assert schema.action_names == ("like", "love") and schema.oov_buckets == 1024
