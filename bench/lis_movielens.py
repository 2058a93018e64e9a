"""The LIS table of the results: runs the README's own `genrank-jax lis` command, exactly as written,
and keeps its report as bench/results/lis_movielens.md and lis_movielens.json (the results page,
docs/results.md, and the README's headline are rendered from them by bench/update_readme.py).

The command (README, "Command line"): LIS of the three leak kinds at 7 and 30 days on
MovieLens-100K for the `like` task (rating >= 4), probes trained before the 80% time quantile and
evaluated after it, 8 seeds, and AIS of the data's own item features (`side:` features: one-hot
genre combination and release-year bucket), each against its placebo. It reads the data from
`~/data/ml-100k`, as written; put (or link) the files there first.

  python bench/lis_movielens.py

The command runs in a shell in a fresh temporary folder (its report goes to runs/lis-1 there), so
lis.json records it as typed. Runs from a checkout: `genrank-jax` must be on the PATH.
"""

from __future__ import annotations

import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def readme_command() -> str:
    """The `genrank-jax lis` line of the README's "Command line" block, continuations joined."""
    section = (ROOT / "README.md").read_text().split("## Command line", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```bash\n(.*?)```", section, re.S)[:1]
    lines = [" ".join(line.split("#", 1)[0].split()) for line in block.replace("\\\n", " ").splitlines()]
    (command,) = [line for line in lines if line.startswith("genrank-jax lis ")]
    return command


def main() -> int:
    command = readme_command()
    with tempfile.TemporaryDirectory() as folder:
        done = subprocess.run(["bash", "-c", command], cwd=folder)
        if done.returncode:
            return done.returncode
        report = pathlib.Path(folder) / "runs" / "lis-1"
        RESULTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(report / "lis.md", RESULTS / "lis_movielens.md")
        shutil.copy(report / "lis.json", RESULTS / "lis_movielens.json")
    print(f"kept {RESULTS / 'lis_movielens.md'} and {RESULTS / 'lis_movielens.json'}; "
          "run python bench/update_readme.py")
    return 0


if __name__ == "__main__":
    sys.exit(main())
