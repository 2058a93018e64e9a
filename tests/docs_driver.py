"""Runs the ```python blocks of one docs page in order, in one namespace (used by test_docs_examples.py).

    python tests/docs_driver.py blocks.json

blocks.json: {"page": "docs/...", "blocks": [{"line": N, "code": "..."}], "check": "..." or null}.
The blocks run in the current folder (the test gives each page a fresh one) against this
checkout's genrank_jax (bench/from_checkout.py), each after the ones before it, as a reader runs
them one after the other; then `check`, in the same namespace, asserts what the page says they
print or compute. Each block is compiled under its page and line, so a traceback names them.
"""

from __future__ import annotations

import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def main(path: str) -> None:
    sys.path.insert(0, str(ROOT / "bench"))
    import from_checkout

    from_checkout.install()
    spec = json.loads(pathlib.Path(path).read_text())
    scope = {"__name__": "__main__"}
    for block in spec["blocks"]:
        print(f"== {spec['page']}, block at line {block['line']}", file=sys.stderr, flush=True)
        exec(compile(block["code"], f"{spec['page']}:{block['line']}", "exec"), scope)
    if spec.get("check"):
        exec(compile(spec["check"], f"check of {spec['page']}", "exec"), scope)


if __name__ == "__main__":
    main(sys.argv[1])
