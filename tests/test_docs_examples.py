"""Every ```python block of the docs pages runs as written, in order, in a fresh folder.

A page's blocks run one after the other in one namespace, in a process of the page's own
(tests/docs_driver.py), against this checkout. A line just above a block may say how:
  <!-- cpu-devices: N -->        the page's process sees N CPU devices (XLA's host device count)
  <!-- tested-by: PATH (why) --> another test runs it (it needs files the page's commands make):
                                 reported here as a skip, and PATH must name the page
  <!-- no-run: why -->           not run (only for hardware or several hosts): a visible skip
CHECKS adds, per page, assertions on what the blocks print or compute. The README's own blocks
are run by tests/test_readme.py.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
MARK = re.compile(r"<!--\s*(cpu-devices|tested-by|no-run):\s*(.*?)\s*-->")

# page -> code run after its blocks, in their namespace
CHECKS = {
    "docs/guides/lis.md": """
table = report.to_markdown()
assert "| future_item_embeddings@7d | leak |" in table and "| content | representation |" in table, table
assert "| features | reference |" in table, table  # the features baseline, a yardstick for the probes
""",
    "docs/guides/serving.md": """
import numpy as np
for b, got in enumerate(per_request):  # the Scorer's micro-batches give the full forward pass's logits
    np.testing.assert_allclose(got, np.asarray(logits)[b, :len(got)], atol=1e-5)
""",
    "docs/guides/multi-host.md": """
import jax
assert len(jax.devices()) == 8 and dict(mesh.shape) == {"data": 4, "model": 2}, (jax.devices(), mesh.shape)
""",
    "docs/guides/kernels.md": """
assert float(jnp.abs(kernel - reference).max()) < 1e-5
""",
    "docs/guides/training-loop.md": """
assert step == 9 and float(loss) > 0
""",
    "docs/guides/defaults.md": """
assert trainer.best is not None and 0.5 < trainer.best["auc"] <= 1.0, trainer.best
""",
}

# page -> what its blocks print (a regular expression, searched in their output)
PRINTS = {
    "docs/guides/multi-host.md": r"(?m)^\d+\.\d+(e-?\d+)?$",  # the last step's loss
    "docs/guides/training-loop.md": r"step 9: loss \d+\.\d+",
    "docs/guides/kernels.md": r"\(2, 24, 2, 16\) ",
}


def pages() -> list[pathlib.Path]:
    return sorted((ROOT / "docs").glob("**/*.md"))


def blocks(page: pathlib.Path) -> list[dict]:
    """The page's ```python blocks: line (of the fence), code and the mark above it, if any."""
    lines = page.read_text().splitlines()
    found, i = [], 0
    while i < len(lines):
        if lines[i].strip() == "```python":
            end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
            above = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
            mark = MARK.search(above)
            found.append({"line": i + 1, "code": "\n".join(lines[i + 1:end]) + "\n",
                          "mark": (mark.group(1), mark.group(2)) if mark else None})
            i = end
        i += 1
    return found


def page_id(page: pathlib.Path) -> str:
    return str(page.relative_to(ROOT))


def runnable_pages() -> list[pathlib.Path]:
    return [page for page in pages() if any(b["mark"] is None or b["mark"][0] == "cpu-devices" for b in blocks(page))]


def skipped_blocks() -> list[tuple[pathlib.Path, dict]]:
    return [(page, block) for page in pages() for block in blocks(page)
            if block["mark"] is not None and block["mark"][0] in ("tested-by", "no-run")]


@pytest.mark.parametrize("page", runnable_pages(), ids=page_id)
def test_python_blocks_run_in_order(tmp_path, page):
    runs = [b for b in blocks(page) if b["mark"] is None or b["mark"][0] == "cpu-devices"]
    devices = max([int(b["mark"][1]) for b in runs if b["mark"]] or [0])
    spec = tmp_path / "blocks.json"
    spec.write_text(json.dumps({"page": page_id(page), "check": CHECKS.get(page_id(page)),
                                "blocks": [{"line": b["line"], "code": b["code"]} for b in runs]}))
    env = {**os.environ, "GENRANK_TFDS_DIR": str(tmp_path / "tfds"), "MPLBACKEND": "Agg"}
    if devices:
        flags = [f for f in env.get("XLA_FLAGS", "").split() if "force_host_platform_device_count" not in f]
        env.update(JAX_PLATFORMS="cpu",
                   XLA_FLAGS=" ".join(flags + [f"--xla_force_host_platform_device_count={devices}"]))
    work = tmp_path / "work"
    work.mkdir()
    done = subprocess.run([sys.executable, str(ROOT / "tests" / "docs_driver.py"), str(spec)], cwd=work, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{page_id(page)}:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    if page_id(page) in PRINTS:
        assert re.search(PRINTS[page_id(page)], done.stdout), done.stdout[-3000:]


@pytest.mark.parametrize("page, block", skipped_blocks(),
                         ids=lambda value: (page_id(value) if isinstance(value, pathlib.Path)
                                            else f"line{value['line']}"))
def test_blocks_not_run_here_say_why(page, block):
    kind, why = block["mark"]
    if kind == "tested-by":
        tester = ROOT / why.split()[0]
        assert tester.is_file(), f"{page_id(page)}:{block['line']} names {tester}, which does not exist"
        assert page_id(page) in tester.read_text(), f"{tester.name} does not run {page_id(page)}"
        pytest.skip(f"{page_id(page)}:{block['line']} runs in {why}")
    assert kind == "no-run" and why, block
    pytest.skip(f"{page_id(page)}:{block['line']} is not run: {why}")


def test_every_python_block_is_run_or_says_why():
    every = [(page, block) for page in pages() for block in blocks(page)]
    assert len(every) >= 6, [page_id(page) for page, _ in every]
    unknown = [f"{page_id(page)}:{block['line']}" for page, block in every
               if block["mark"] is not None and block["mark"][0] not in ("cpu-devices", "tested-by", "no-run")]
    assert not unknown, unknown
    assert set(CHECKS) | set(PRINTS) <= {page_id(page) for page in runnable_pages()}, set(CHECKS) | set(PRINTS)


def test_every_page_is_in_the_site_nav():
    """mkdocs only notes a page left out of mkdocs.yml's nav, even in strict mode: a page nobody can reach."""
    nav = set(re.findall(r":\s*(\S+\.md)\s*$", (ROOT / "mkdocs.yml").read_text(), re.M))
    on_disk = {str(page.relative_to(ROOT / "docs")) for page in pages()}
    assert nav == on_disk, (on_disk - nav, nav - on_disk)
