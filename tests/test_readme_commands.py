"""Every `genrank-jax` command of the README and of each docs page, in order, in a fresh folder of the
page's own, as a new user copies them: each one's `--dry-run` must pass and write nothing.

The commands are the lines of the ```bash blocks that start with `genrank-jax` (a set-up line's
`... && genrank-jax train` included; `\\` continues a line; `$i`, a process index, is tried as 0
and 1). They run in a fresh folder with a fresh home: `~/data/ml-100k` holds a small log in the
GroupLens format (the dry run checks the files; it prepares nothing), and the prepared-data cache
is empty. A command whose output a later one reads (its `--out`, named later; the train run a
later `--resume` continues) also runs for real, shortened (tests/readme_driver.py says how), so the
next dry run finds it. With `-m slow`, every command whose dry run expects under a minute also
runs for real, as written.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shlex
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def documents() -> list[pathlib.Path]:
    """The README and the docs pages that show `genrank-jax` commands (each walked on its own)."""
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("**/*.md"))]
    return [page for page in pages if command_lines(page.read_text())]


def document_id(page: pathlib.Path) -> str:
    return str(page.relative_to(ROOT))


def command_lines(text: str) -> list[list[str]]:
    """The `genrank-jax` commands of the bash blocks of `text`, as words (without the program)."""
    commands = []
    for block in re.findall(r"```(?:bash|sh|shell)\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            segment: list[str] = []
            for word in [*words, "&&"]:  # a set-up line chains commands with &&
                if word in ("&&", ";", "||"):
                    if segment[:1] == ["genrank-jax"]:
                        commands.append(segment[1:])
                    segment = []
                else:
                    segment.append(word)
    return commands


def expanded(words: list[str], home: pathlib.Path) -> list[list[str]]:
    """`~` as the shell expands it (alone, and after NAME=), one command per value of `$i`."""
    def tilde(word: str) -> str:
        head, sep, tail = word.partition("=")
        if word.startswith("~/"):
            return str(home / word[2:])
        if sep and tail.startswith("~/") and re.fullmatch(r"[A-Za-z_]\w*", head):
            return f"{head}={home / tail[2:]}"
        return word

    words = [tilde(w) for w in words]
    if "$i" not in words:
        return [words]
    return [[str(i) if w == "$i" else w for w in words] for i in (0, 1)]


def option(words: list[str], name: str) -> str | None:
    for i, word in enumerate(words):
        if word == name and i + 1 < len(words):
            return words[i + 1]
        if word.startswith(name + "="):
            return word.split("=", 1)[1]
    return None


def plan(document: pathlib.Path, home: pathlib.Path) -> list[dict]:
    commands = [argv for words in command_lines(document.read_text()) for argv in expanded(words, home)]
    steps = [{"argv": argv, "producer": False,
              # meant for a machine in a cluster (a TPU slice): jax finds the processes there
              "cluster": "--distributed" in argv and option(argv, "--coordinator") is None}
             for argv in commands]
    for i, argv in enumerate(commands):
        out = option(argv, "--out")
        if out is not None:
            read = re.compile(rf"(^|[=:]){re.escape(out.rstrip('/'))}(/|$)")
            steps[i]["producer"] = any(read.search(word) for later in commands[i + 1:] for word in later)
        if argv[0] == "train" and "--resume" in argv and out is None:
            # continues the newest runs/train-N: the train run before it made that
            earlier = [j for j in range(i) if commands[j][0] == "train" and option(commands[j], "--out") is None
                       and "--resume" not in commands[j]]
            assert earlier, f"`genrank-jax {shlex.join(argv)}` resumes a run no earlier command starts"
            steps[earlier[-1]]["producer"] = True
    return steps


def walk(tmp_path: pathlib.Path, document: pathlib.Path, real_under_s: float | None) -> list[dict]:
    """The commands of one document, in order, in a fresh folder with a fresh home."""
    from tests.data import fixtures

    home, work, cache = tmp_path / "home", tmp_path / "work", tmp_path / "tfds"
    work.mkdir()
    fixtures.write_grouplens_100k(home / "data" / "ml-100k", fixtures.movielens_log(seed=1))
    steps = plan(document, home)
    assert steps, f"{document_id(document)} shows no genrank-jax command"
    (tmp_path / "plan.json").write_text(json.dumps({"commands": steps, "real_under_s": real_under_s,
                                                     "roots": [str(work), str(home), str(cache)]}))
    env = {**os.environ, "HOME": str(home), "GENRANK_TFDS_DIR": str(cache),
           # the --mesh examples ask for 8 devices: a CPU simulates them
           "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, str(ROOT / "tests" / "readme_driver.py"), str(tmp_path / "plan.json"),
                           str(tmp_path / "results.json")], cwd=work, env=env, capture_output=True, text=True,
                          timeout=1500)
    results_file = tmp_path / "results.json"
    results = json.loads(results_file.read_text()) if results_file.exists() else []
    assert done.returncode == 0, done.stderr[-3000:]
    return results


def check(results: list[dict], steps_expected: int | None = None) -> None:
    for result in results:
        line = "genrank-jax " + shlex.join(result["argv"])
        if result["kind"] == "dry-run":
            assert result["code"] == 0, f"refused: {line}\n{result['err']}{result['out'][-2000:]}"
            assert result["out"].splitlines()[0].split(":")[0] in ("run folder", "report folder", "output folder"), line
            assert result["out"].rstrip().endswith("dry run: nothing was written"), line
            assert result["written"] == [], f"{line} wrote {result['written']}"
        elif result["kind"] == "producer":
            # interrupted after its first checkpoint (130), or done (0)
            assert result["code"] in (0, 130), f"{line}\n{result['err']}"
        else:
            assert result["code"] == 0, f"{line}\n{result['err']}"


@pytest.mark.parametrize("document", documents(), ids=document_id)
def test_every_command_passes_its_dry_run_in_order(tmp_path, document):
    results = walk(tmp_path, document, real_under_s=None)
    check(results)
    dry = [r for r in results if r["kind"] == "dry-run"]
    assert len(dry) == len(plan(document, tmp_path / "home")), "the walk stopped early"
    # each command found its own folder, though the ones before it had filled theirs (the README's
    # examples all wrote to one default --out, so the second was refused)
    folders = [r["out"].splitlines()[0].split(": ", 1)[1].split(" (")[0] for r in dry if "--resume" not in r["argv"]]
    assert len(folders) == len(set(folders)), folders
    # a train run that `--resume` continues was interrupted after its first checkpoint, kept and resumed
    for resume in [r for r in dry if r["argv"][:2] == ["train", "--resume"]]:
        assert "resume: from step 1 (verified" in resume["out"], resume["out"]


def test_the_readme_starts_with_its_set_up_command_and_the_cli_guide_resumes_a_run():
    """The README's first command is the set-up line's `genrank-jax train`; the CLI guide shows every
    `train` example, `--resume` among them (the walk above checks that it resumes)."""
    readme = plan(ROOT / "README.md", pathlib.Path("home"))
    assert readme[0]["argv"] == ["train"], [s["argv"] for s in readme]
    cli = [s["argv"] for s in plan(ROOT / "docs" / "guides" / "cli.md", pathlib.Path("home"))]
    assert len(cli) >= 10 and ["train", "--resume"] in cli, cli
    walked = {document_id(page) for page in documents()}
    assert {"README.md", "docs/guides/cli.md", "docs/guides/own-log.md", "docs/guides/serving.md",
            "docs/guides/multi-host.md", "docs/guides/lis.md"} <= walked, walked


@pytest.mark.slow
@pytest.mark.parametrize("document", documents(), ids=document_id)
def test_commands_under_a_minute_run_for_real(tmp_path, document):
    results = walk(tmp_path, document, real_under_s=60)
    check(results)
    if document.name == "own-log.md":
        real = [r for r in results if r["kind"] == "real"]
        assert {r["argv"][0] for r in real} >= {"simulate", "export"}, [r["argv"] for r in real]


def test_command_lines_are_found_with_their_continuations():
    text = "```bash\npython3 -m venv .venv && pip install -e . && genrank-jax train\n" \
           "genrank-jax lis --data a \\\n    --seeds 8   # comment\necho genrank-jax no\n```\n" \
           "```python\ngenrank-jax nope\n```\n"
    assert command_lines(text) == [["train"], ["lis", "--data", "a", "--seeds", "8"]]
