"""The GenRank paper's ablation (its Table 1) on public data: organization, biases, baselines.

    python bench/ablation.py --data movielens:100k --data-dir ../shared/data/ml-100k --seeds 3

Eight models, trained on the same temporal split with the same hyperparameters, `--seeds` seeds each:
  genrank         action-oriented tokens (N + M), ALiBi position and time biases (the paper's model)
  genrank-nobias  the same without the two biases
  item-oriented   HSTU-style interleaved item/action tokens (2N + M), same block, width and biases
  din             DIN-style target attention + MLP over the action-oriented batch
  logistic        per-task user bias + item bias (no features, no sequence)
  features        the production baseline: a logistic regression on aggregate features of earlier
                  requests (item, user and user-on-genre action rates, counts, recency)
  genrank-fullhistory  the paper's ablation: history tokens see the whole history (no causal mask)
  genrank-historyloss  the paper's ablation: loss at history positions too
Every model stops the same way, so the comparison is fair by construction: it is fitted on the
train split minus its validation slice (the latest 15% of train requests by time,
genrank_jax.data.holdout), scored on the slice after every epoch, stopped after `--patience`
epochs without a new best validation AUC (first action), and evaluated on the eval split in its
best state. The table gives the chosen (best) epoch per seed and the validation AUC there.
Reported: AUC and GAUC per action task on the eval split (mean +- std over seeds), training
exposures/s and time per epoch. Throughput excludes compilation and validation: before the timed run,
one discarded step per distinct batch shape of the longest possible run fills the jit cache (its time
is reported as compile_s). Seeds loop outermost, so load drift on a shared machine hits every model
alike; speed is the median over seeds. Writes bench/results/ablation_<data>.md and a JSON of
per-run rows (each with its validation curve) and run metadata.

Defaults come from genrank_jax.training.defaults (the same rule as `genrank-jax train`): for ml-100k-sized
data preset "tiny", max_history 128, 64 candidates, batch 64, lr 3e-3, weight decay 1e-4, ALiBi
alibi_max_bias 16 and time_bias_scale 0.1, at most 20 epochs with patience 3; why those, see
genrank_jax/training/defaults.py. Settings are compared on the validation column, never on eval.
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchlib import RESULTS, run_header, write_rows
from genrank_jax.cli.command_line import user_command
from genrank_jax.data.batching import batch_shape, padded_max_tokens, plan_batches
from genrank_jax.data.sources import load_dataset
from genrank_jax.model.config import GenRankConfig
from genrank_jax.training import TrainConfig, Trainer
from genrank_jax.training.defaults import defaults_for

# name -> config overrides; "item-oriented" is the speed baseline of the other sequence models
MODELS = {
    "genrank": dict(architecture="genrank", organization="action"),
    "genrank-nobias": dict(architecture="genrank", organization="action", use_alibi=False, use_time_bias=False),
    "item-oriented": dict(architecture="genrank", organization="item"),
    "din": dict(architecture="din"),
    "logistic": dict(architecture="logistic"),
    "features": dict(architecture="features"),
    # the paper's "why it works" ablations (genrank_jax.model.history_variants)
    "genrank-fullhistory": dict(architecture="genrank", organization="action", history_mask="full"),
    "genrank-historyloss": dict(architecture="genrank", organization="action", history_loss=True),
}
# two-sided 95% Student t quantiles by degrees of freedom (seeds - 1), for intervals paired by seed
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def paired_interval(a: list[float], b: list[float]) -> tuple[float, float, float]:
    """(mean, low, high) of a - b paired by seed: a 95% t interval (0 width with one seed)."""
    differences = [x - y for x, y in zip(a, b)]
    mean = statistics.mean(differences)
    if len(differences) < 2:
        return mean, mean, mean
    half = T95.get(len(differences) - 1, 1.96) * statistics.stdev(differences) / len(differences) ** 0.5
    return mean, mean - half, mean + half
def data_tag(source: str) -> str:
    """File-name tag of a source: movielens:100k -> ml-100k, kuairand:pure -> kuairand-pure."""
    name, _, config = source.partition(":")
    return f"ml-{config}" if name == "movielens" else f"{name}-{config}" if config else name


def served_groups(trainer: Trainer, steps: int) -> list[np.ndarray]:
    """The request groups of the first `steps` training batches, in Trainer.fit's order."""
    groups, epoch = [], 0
    while len(groups) < steps:
        groups += plan_batches(trainer.builder, trainer.train_requests, trainer.plan, epoch)
        epoch += 1
    return groups[:steps]


def warm_up(trainer: Trainer, groups: list[np.ndarray]) -> float:
    """Compile the step for every batch shape `groups` will produce (results discarded); seconds."""
    builder, started = trainer.builder, time.perf_counter()
    seen = set()
    for group in groups:
        seq_len, slots = batch_shape(builder, group)
        if (seq_len, slots) in seen:
            continue
        seen.add((seq_len, slots))
        batch = builder.build(group, seq_len, trainer.plan.batch_size, candidate_slots=slots)
        jax.block_until_ready(trainer._step(trainer.state, jax.tree.map(jnp.asarray, batch)))
    return time.perf_counter() - started


def parse_overrides(pairs: list[str]) -> dict:
    """{"alibi_max_bias": 4.0, ...} from ["alibi_max_bias=4", ...], typed like GenRankConfig's defaults."""
    defaults = {field.name: field.default for field in dataclasses.fields(GenRankConfig)}
    overrides = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or name not in defaults or name in ("features", "architecture", "organization"):
            raise SystemExit(f"--set takes FIELD=VALUE with a GenRankConfig field, got {pair!r}")
        default = defaults[name]
        if isinstance(default, bool):
            overrides[name] = value.lower() in ("1", "true", "yes")
        elif isinstance(default, (int, float)):
            overrides[name] = type(default)(value)
        else:
            overrides[name] = value
    return overrides


def simulator_overrides(pairs: list[str]) -> dict:
    """{"fatigue": 0.3, ...} from ["fatigue=0.3", ...], typed like SimulatorConfig's defaults."""
    from genrank_jax.data.synthetic import SimulatorConfig

    defaults = {field.name: field.default for field in dataclasses.fields(SimulatorConfig)}
    overrides = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or name not in defaults or not isinstance(defaults[name], (int, float)):
            raise SystemExit(f"--sim takes FIELD=VALUE with a numeric SimulatorConfig field, got {pair!r}")
        overrides[name] = type(defaults[name])(value)
    return overrides


def run_one(name: str, dataset, args, seed: int, compiled: dict) -> dict:
    """Train (early stopping on the validation slice) and evaluate one (model, seed); returns its JSON row."""
    organization = MODELS[name].get("organization", "action")
    if args.schedule == "stream":  # one pass in time order, progressive validation; no slice, no epochs
        train = TrainConfig(schedule="stream", window=args.window, batch_size=args.batch_size,
                            batch_building=args.batch_building,
                            learning_rate=args.learning_rate, weight_decay=args.weight_decay, seed=seed,
                            max_history=args.max_history, max_candidates=args.max_candidates)
    else:
        train = TrainConfig(epochs=args.max_epochs, batch_size=args.batch_size, learning_rate=args.learning_rate,
                            batch_building=args.batch_building,
                            weight_decay=args.weight_decay, seed=seed, max_history=args.max_history,
                            max_candidates=args.max_candidates, validation_fraction=args.validation_fraction,
                            patience=args.patience)
    config = GenRankConfig.preset(
        args.preset, dataset.spec, block=args.block, **{**args.config_overrides, **MODELS[name]},
        max_tokens=padded_max_tokens(organization, args.max_history, args.max_candidates))
    trainer = Trainer(config, train, dataset)
    compiled.setdefault(name, trainer)
    compile_s = warm_up(trainer, served_groups(trainer, trainer.train_config.steps))
    started = time.perf_counter()
    trainer.fit()
    train_s = time.perf_counter() - started - trainer.validation_seconds
    groups = ([np.concatenate(trainer.stream_windows)] if args.schedule == "stream"  # each request once
              else served_groups(trainer, trainer.step))
    exposures = int(sum(np.minimum(trainer.builder.candidate_count[g], args.max_candidates).sum() for g in groups))
    epoch_exposures = int(np.minimum(trainer.builder.candidate_count[trainer.train_requests],
                                     args.max_candidates).sum())
    started = time.perf_counter()
    rate = exposures / train_s
    if args.schedule == "stream":
        # the figure is progressive: each eval-period window scored before the model trained on it
        summary = trainer.stream_summary()
        results = {task: {**row, "logloss": float("nan")} for task, row in summary["after_warmup"].items()}
        first = dataset.spec.action_names[0]
        return dict(model=name, seed=seed, steps=trainer.step, epochs=1.0, best_step=trainer.step, best_epoch=1.0,
                    validation_auc=summary["all_windows"][first]["auc"], stopped_early=False,
                    train_exposures=exposures, compile_s=compile_s, train_s=train_s, validation_s=0.0,
                    exposures_per_s=rate, epoch_s=epoch_exposures / rate, eval_s=0.0,
                    final_loss=trainer.history[-1]["loss"], eval=results, validation_curve=[],
                    stream=summary, stream_curve=trainer.stream_curve, config=config.to_json())
    results = trainer.evaluate("eval")  # the best validation state: fit restored it
    best = trainer.best
    return dict(model=name, seed=seed, steps=trainer.step, epochs=trainer.step / trainer.batches_per_epoch,
                best_step=best["step"], best_epoch=best["epoch"], validation_auc=best["auc"],
                stopped_early=trainer.stopped_early, train_exposures=exposures, compile_s=compile_s,
                train_s=train_s, validation_s=trainer.validation_seconds, exposures_per_s=rate,
                epoch_s=epoch_exposures / rate, eval_s=time.perf_counter() - started,
                final_loss=trainer.history[-1]["loss"], eval=results, validation_curve=trainer.validation_curve,
                config=config.to_json())


def mean_std(values) -> str:
    values = list(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {std:.4f}"


def summarize(rows: list[dict], tasks: tuple[str, ...]) -> dict[str, dict]:
    """model -> {task: [auc...], task_gauc: [...], speed: median exposures/s, epoch_s: median}."""
    out = {}
    for name in MODELS:
        mine = [r for r in rows if r["model"] == name]
        if not mine:
            continue
        entry = {"speed": statistics.median(r["exposures_per_s"] for r in mine),
                 "speeds": [r["exposures_per_s"] for r in mine],
                 "epoch_s": statistics.median(r["epoch_s"] for r in mine), "seeds": len(mine),
                 "best_epochs": [r["best_epoch"] for r in mine], "validation_auc": [r["validation_auc"] for r in mine]}
        for task in tasks:
            entry[task] = [r["eval"][task]["auc"] for r in mine]
            entry[task + "_gauc"] = [r["eval"][task]["gauc"] for r in mine]
        out[name] = entry
    return out


def markdown(summary: dict, tasks: tuple[str, ...], header: dict, command: str, meta: dict) -> str:
    first = tasks[0]
    cols = [f"{t} AUC | {t} GAUC" for t in tasks]
    lines = [f"### GenRank ablation on {meta['data']} ({meta['split']})", "",
             f"Machine: {header['device_kind']} ({header['platform']}), jax {header['jax_version']}, "
             f"commit {header['git_commit']}. Command: `{command}`", "",
             f"{meta['train_requests']:,} train (fitted) / {meta['validation_requests']:,} validation / "
             f"{meta['eval_requests']:,} {meta['split']} eval requests; preset {meta['preset']} ({meta['block']} "
             f"block), max_history {meta['max_history']}, batch {meta['batch_size']}, lr {meta['learning_rate']}, "
             f"weight decay {meta['weight_decay']}, at most {meta['max_epochs']} epochs with early stopping "
             f"(patience {meta['patience']} epochs on the validation slice, the latest "
             f"{meta['validation_fraction']:.0%} of train by time), seeds {meta['seeds']}. Eval AUC/GAUC of each "
             "run's best validation state: mean ± std over seeds; best epoch per seed; speed: median over "
             "seeds, compile and validation excluded." if meta.get("schedule", "epochs") == "epochs" else
             f"STREAM schedule: the whole log once in time order in windows of {meta['window']}, each window "
             "scored before it is trained on; AUC/GAUC: the exposure-weighted mean over the windows of the eval "
             "period (progressive validation), mean ± std over seeds; 'val' column: the same over all windows.", "",
             f"| model | {' | '.join(cols)} | val {first} AUC | best epoch | Δ {first} AUC vs item | "
             "exposures/s | s/epoch | speed vs item |",
             "| --- |" + " --- |" * (2 * len(tasks) + 6)]
    base = summary.get("item-oriented")
    for name, entry in summary.items():
        cells = [f"{mean_std(entry[t])} | {mean_std(entry[t + '_gauc'])}" for t in tasks]
        delta = f"{statistics.mean(entry[first]) - statistics.mean(base[first]):+.4f}" if base else "-"
        speed = f"{entry['speed'] / base['speed']:.2f}x" if base else "-"
        epochs = " / ".join(f"{e:g}" for e in entry["best_epochs"])
        lines.append(f"| {name} | {' | '.join(cells)} | {mean_std(entry['validation_auc'])} | {epochs} | "
                     f"{delta} | {entry['speed']:,.0f} | "
                     f"{entry['epoch_s']:.1f} | {speed} |")
    notes = []
    if base and "genrank" in summary:
        g = summary["genrank"]
        # same-seed ratios show how much the machine's load moved between runs
        paired = " / ".join(f"{a / b:.2f}x" for a, b in zip(g["speeds"], base["speeds"]))
        notes.append(f"Organization: GenRank trains {g['speed'] / base['speed']:.2f}x the item-oriented "
                     f"model's exposures/s (paper: 1.79x; per seed {paired}) at {first} AUC "
                     f"{statistics.mean(g[first]) - statistics.mean(base[first]):+.4f}.")
    if "genrank" in summary and "genrank-nobias" in summary:
        g, n = summary["genrank"], summary["genrank-nobias"]
        notes.append(f"Biases: with vs without, {first} AUC "
                     f"{statistics.mean(g[first]) - statistics.mean(n[first]):+.4f}, "
                     f"speed {g['speed'] / n['speed']:.2f}x (the bias is computed per (query, key) pair and head in "
                     "the attention op; the paper's +25% speed came from replacing HSTU's learned relative-bias "
                     "tables, which no model here has).")
    if "features" in summary:
        f = summary["features"]
        for name in ("genrank", "genrank-nobias", "item-oriented", "din"):
            if name in summary and len(summary[name][first]) == len(f[first]):
                mean, low, high = paired_interval(summary[name][first], f[first])
                verdict = "above" if low > 0 else "below" if high < 0 else "not separated from"
                notes.append(f"{name} vs features, {first} AUC: {mean:+.4f} (95% interval paired by seed "
                             f"[{low:+.4f}, {high:+.4f}], {verdict} zero).")
    best = max(summary, key=lambda name: statistics.mean(summary[name][first]))
    notes.append(f"Best {first} AUC: {best}.")
    return "\n".join(lines + [""] + notes) + "\n"


META_KEYS = ("data", "split", "preset", "block", "max_history", "batch_size", "learning_rate", "weight_decay",
             "max_epochs", "patience", "validation_fraction", "seeds", "train_requests", "validation_requests",
             "eval_requests")


def complete_seeds(rows: list[dict], models: int) -> list[dict]:
    """The rows of seeds that ran every one of `models` models (a run cut short leaves a partial seed)."""
    return [r for r in rows if sum(q["seed"] == r["seed"] for q in rows) == models]


def render_saved(paths: list[pathlib.Path]) -> list[dict]:
    """Rewrite bench/results/ablation_<data>.md from saved runs' JSON; several runs (e.g. one seed per
    process) are joined: complete seeds only, a seed found twice taken from the first file. With more
    than one file the joined rows are also written as a new JSON."""
    import json

    runs = [json.loads(path.read_text()) for path in paths]
    header, rows = dict(runs[0]["header"]), []
    models = len({r["model"] for run in runs for r in run["rows"]})
    for run in runs:
        seen = {r["seed"] for r in rows}
        rows += [r for r in complete_seeds(run["rows"], models) if r["seed"] not in seen]
    if not rows:
        raise SystemExit(f"no seed ran all {models} models in {', '.join(map(str, paths))}")
    if len(runs) > 1:
        header["command"] = " ; ".join(run["header"]["command"] for run in runs) + " (joined with --from-json)"
    header["seeds"] = len({r["seed"] for r in rows})
    tasks = tuple(rows[0]["eval"])
    meta = {key: header[key] for key in META_KEYS}
    table = markdown(summarize(rows, tasks), tasks, header, header["command"], meta)
    stem = f"ablation_{data_tag(header['data'])}"
    out = RESULTS / f"{stem}.md"
    out.write_text(table)
    joined = write_rows(stem, header, rows, "auto") if len(runs) > 1 else None
    print(table + f"\nwrote {out}" + (f" and {joined}" if joined else ""))
    return rows


def save(rows: list[dict], args, dataset, header: dict, command: str, trainer: Trainer,
         json_path: pathlib.Path | None) -> tuple[str, pathlib.Path | None]:
    """Write the table (markdown) and the rows (JSON, at `json_path` once chosen); (table, JSON path)."""
    seeds = sorted({r["seed"] for r in rows})
    complete = complete_seeds(rows, len(args.models.split(",")))
    meta = dict(data=args.data, split="temporal", preset=args.preset, block=args.block, max_history=args.max_history,
                batch_size=args.batch_size, learning_rate=args.learning_rate, weight_decay=args.weight_decay,
                max_epochs=args.max_epochs, patience=args.patience, validation_fraction=args.validation_fraction,
                seeds=len({r["seed"] for r in complete}) or len(seeds), train_requests=len(trainer.train_requests),
                validation_requests=len(trainer.validation_requests) if trainer.validation_requests is not None else 0,
                eval_requests=len(trainer.eval_requests), schedule=args.schedule, window=args.window)
    tasks = dataset.spec.action_names
    table = markdown(summarize(complete or rows, tasks), tasks, header, command, meta)
    if not args.out:
        return table, None
    stem = f"ablation_{data_tag(args.data)}" + ("_stream" if args.schedule == "stream" else "")
    base = RESULTS / stem if args.out == "auto" else pathlib.Path(args.out)
    base.parent.mkdir(parents=True, exist_ok=True)
    base.with_suffix(".md").write_text(table)
    target = str(json_path) if json_path else "auto" if args.out == "auto" else str(base.with_suffix(".json"))
    return table, write_rows(stem, dict(header, command=command, **meta), rows, target)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="movielens:100k")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--prepared", default=None, metavar="FILE",
                        help="read the dataset from a bench/prepared_data.py file (a machine without TFDS); "
                             "--data still names it")
    parser.add_argument("--sim", action="append", default=[], metavar="FIELD=VALUE",
                        help="a SimulatorConfig field for a synthetic source, e.g. --sim fatigue=0.3 (repeatable)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=0,
                        help="seeds first-seed .. first-seed + seeds - 1 (split a long run over processes; "
                             "--merge joins their JSONs)")
    parser.add_argument("--max-epochs", type=int, default=None, help="default: genrank_jax.training.defaults' rule")
    parser.add_argument("--patience", type=int, default=None, help="epochs without a new best validation AUC")
    parser.add_argument("--validation-fraction", type=float, default=None)
    parser.add_argument("--preset", default=None)
    parser.add_argument("--block", default="transformer", choices=["transformer", "hstu"])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=None)
    parser.add_argument("--weight-decay", type=float, default=None)
    parser.add_argument("--max-history", type=int, default=None)
    parser.add_argument("--max-candidates", type=int, default=None)
    parser.add_argument("--set", dest="config_overrides", action="append", default=[], metavar="FIELD=VALUE",
                        help="a GenRankConfig field for every model, e.g. --set alibi_max_bias=4 (repeatable; "
                             "added to the defaults' slopes)")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated subset of " + ",".join(MODELS))
    parser.add_argument("--schedule", default="epochs", choices=["epochs", "stream"],
                        help="epochs: early stopping on the validation slice, eval split scored; stream: the log once "
                             "in time order, progressive-validation AUC over the eval period's windows")
    parser.add_argument("--batch-building", default="host", choices=["host", "device", "auto"],
                        help="TrainConfig.batch_building (host: the numpy builder the warm-up compiles for)")
    parser.add_argument("--window", default="1d", help="--schedule stream: window span (1d, 6h) or exposures")
    parser.add_argument("--out", default="auto",
                        help="'auto': bench/results/ablation_<data>.md + JSON; a path stem: <stem>.md/.json")
    parser.add_argument("--from-json", nargs="+", default=None,
                        help="re-render the table from saved runs' JSON (several: joined), no training")
    args = parser.parse_args(argv)
    overrides = parse_overrides(args.config_overrides)
    if args.from_json:
        return render_saved([pathlib.Path(path) for path in args.from_json])
    names = args.models.split(",")
    unknown = set(names) - set(MODELS)
    if unknown:
        raise SystemExit(f"unknown models {sorted(unknown)}; choose from {list(MODELS)}")
    command = user_command(["python", "bench/ablation.py", *(sys.argv[1:] if argv is None else argv)])
    if args.prepared:
        from prepared_data import load as load_prepared
        dataset = load_prepared(args.prepared)
    else:
        dataset = load_dataset(args.data, data_dir=args.data_dir, **simulator_overrides(args.sim))
    split = "temporal"
    defaults = defaults_for(dataset)
    for option, value in (("max_epochs", defaults.epochs or 20), ("patience", defaults.patience),
                          ("validation_fraction", defaults.validation_fraction), ("preset", defaults.preset),
                          ("learning_rate", defaults.learning_rate), ("weight_decay", defaults.weight_decay),
                          ("max_history", defaults.max_history), ("max_candidates", defaults.max_candidates)):
        if getattr(args, option) is None:
            setattr(args, option, value)
    args.config_overrides = {**defaults.config, **overrides}
    header = run_header()
    print(header, flush=True)
    rows, compiled, json_path = [], {}, None
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        for name in names:
            row = run_one(name, dataset, args, seed, compiled)
            rows.append(dict(header, data=args.data, split=split, **row))
            tasks = " ".join(f"{t} {m['auc']:.4f}/{m['gauc']:.4f}" for t, m in row["eval"].items())
            print(f"seed {seed} {name:<15} {tasks}  {row['exposures_per_s']:,.0f} exp/s, "
                  f"epoch {row['epoch_s']:.1f} s, compile {row['compile_s']:.1f} s", flush=True)
            first = dataset.spec.action_names[0]
            print(f"  validation {first} AUC by epoch: " + " ".join(f"{e['auc']:.4f}" for e in row["validation_curve"])
                  + f"; best epoch {row['best_epoch']:g}", flush=True)
            # rewritten after every run: a run cut short keeps what finished (seeds counts complete ones)
            table, json_path = save(rows, args, dataset, header, command, compiled[names[0]], json_path)
    print(table + (f"\nwrote {json_path}" if json_path else ""))
    return rows


if __name__ == "__main__":
    main()
