"""One table across datasets from bench/ablation.py's saved runs: the first action's eval AUC of every
model on every dataset (mean ± std over seeds, with the seed count), and each model's difference to
the features baseline paired by seed with a 95% t interval.

    python bench/across_datasets.py bench/results/issue26/*.json --out bench/results/issue26/table.md

Inputs are ablation JSON files or archives of them (bench/job_queue.py's results.tar.gz); streaming
runs are left out (this is the epoch protocol's table), and `--data` keeps only the named datasets.
A (data, model, seed) found twice keeps the first.

Runs of one dataset may come from several ablation calls (e.g. 3 seeds of two models, 1 seed of
the others); rows are grouped by (data, model).
"""

from __future__ import annotations

import argparse
import collections
import pathlib
import statistics

from ablation import MODELS, paired_interval
from feed_tables import read_runs


def goal_verdict(genrank: dict, features: dict) -> str:
    """GenRank − features paired by seed, and which side of zero its interval lies."""
    common = sorted(set(genrank) & set(features))
    if len(common) < 2:
        return "not measured with 2+ seeds"
    mean, low, high = paired_interval([genrank[s] for s in common], [features[s] for s in common])
    side = "above zero: met" if low > 0 else "below zero: not met" if high < 0 else "not separated from zero: not met"
    return f"{mean:+.4f} [{low:+.4f}, {high:+.4f}] over {len(common)} seeds, {side}"


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", help="ablation JSON files")
    parser.add_argument("--out", default=None, help="write the markdown here too")
    parser.add_argument("--data", default=None, help="comma-separated datasets to keep (default: all)")
    args = parser.parse_args(argv)
    keep = set(args.data.split(",")) if args.data else None
    auc = collections.defaultdict(dict)  # (data, model) -> {seed: first-action AUC}
    first_action, commands, commits = {}, [], set()
    machines = set()
    for saved in read_runs(args.runs):
        header = saved["header"]
        if header.get("schedule", "epochs") != "epochs" or (keep and header["data"] not in keep):
            continue
        commands.append(header["command"])
        commits.add(header["git_commit"])
        machines.add(f"{header['device_kind']} (jax {header['jax_version']})")
        for row in saved["rows"]:
            task = next(iter(row["eval"]))
            first_action[row["data"]] = task
            auc[row["data"], row["model"]].setdefault(row["seed"], row["eval"][task]["auc"])
    datasets = sorted({data for data, _ in auc})
    lines = ["| model | " + " | ".join(f"{d} ({first_action[d]} AUC)" for d in datasets) + " |",
             "| --- |" + " --- |" * len(datasets)]
    for model in MODELS:
        cells = []
        for data in datasets:
            values = list(auc.get((data, model), {}).values())
            if not values:
                cells.append("")
                continue
            spread = f" ± {statistics.stdev(values):.4f}" if len(values) > 1 else ""
            cell = f"{statistics.mean(values):.4f}{spread} ({len(values)} seed{'s' if len(values) > 1 else ''})"
            base = auc.get((data, "features"), {})
            common = sorted(set(base) & set(auc[data, model]))
            if model != "features" and common:
                mean, low, high = paired_interval([auc[data, model][s] for s in common], [base[s] for s in common])
                cell += (f"; vs features {mean:+.4f} [{low:+.4f}, {high:+.4f}]" if len(common) > 1
                         else f"; vs features {mean:+.4f} (1 seed)")
            cells.append(cell)
        if any(cells):
            lines.append(f"| {model} | " + " | ".join(cells) + " |")
    lines += ["", "Against the goal (GenRank above features on every dataset, 3 seeds, the paired interval above 0):"]
    lines += [f"- {data}: {goal_verdict(auc.get((data, 'genrank'), {}), auc.get((data, 'features'), {}))}"
              for data in datasets]
    text = "\n".join(
        ["Eval AUC of the first action in each model's best validation state (early stopping on the latest 15% of "
         "train; no refit), mean ± std over seeds; 'vs features': the difference to the features baseline paired "
         "by seed, with its 95% t interval when there are several seeds. Machines: " + ", ".join(sorted(machines))
         + "; commits: " + ", ".join(sorted(commits)) + ".",
         "", *lines, "", "Commands:", *(f"- `{c}`" for c in commands)]) + "\n"
    if args.out:
        pathlib.Path(args.out).write_text(text)
    print(text)
    return text


if __name__ == "__main__":
    main()
