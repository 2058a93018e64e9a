"""The README's quick-start runs as written (with fewer steps) and the README has two set-up commands."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]


def python_blocks():
    return re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)


def test_quick_start_trains_inside_a_user_loop(capsys):
    (code,) = [block for block in python_blocks() if "train_step" in block]
    assert "zip(range(200), batches)" in code
    exec(compile(code.replace("range(200)", "range(3)"), "README quick-start", "exec"), {})
    assert re.search(r"step 2: loss \d+\.\d+", capsys.readouterr().out)


def test_exactly_two_setup_commands():
    setup = (ROOT / "README.md").read_text().split("## Set up", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```bash\n(.*?)```", setup, re.S)
    assert len(commands) == 2
    assert "genrank-jax train" in commands[0] and "pytest" in commands[1]
    ci = (ROOT / ".ci" / "run").read_text()
    assert "pip install --quiet -e '.[test]'" in ci and "pytest" in ci


def test_lis_example_reports_a_leak_and_a_representation(capsys):
    (code,) = [block for block in python_blocks() if "leakage_impact" in block]
    exec(compile(code, "README LIS example", "exec"), {})
    table = capsys.readouterr().out
    assert "| future_item_embeddings@7d | leak |" in table and "| content | representation |" in table


def test_serving_example_runs():
    (code,) = [block for block in python_blocks() if "encode_history" in block]
    scope = {}
    exec(compile(code, "README serving example", "exec"), scope)
    logits, per_request = scope["logits"], scope["per_request"]
    import numpy as np
    for b, got in enumerate(per_request):
        np.testing.assert_allclose(got, np.asarray(logits)[b, :len(got)], atol=1e-5)
