"""Fill the results page (docs/results.md) and the README's headline results from the files in
bench/results/ (nothing there is typed by hand).

    python bench/update_readme.py [--page docs/results.md] [--readme README.md] [--results bench/results] [--check]

In docs/results.md, between `<!-- results:start -->` and `<!-- results:end -->`, it writes, each from
the newest file of its kind (by modification time): the ablation markdown (ablation_*.md, not the
_validation ones), the organization benchmark (organization_*.json), a `genrank-jax train` run
(train_default*.json, a copy of its metrics.json), the README's ml-100k `genrank-jax train` run
(train_ml-100k*.json, a copy of its metrics.json), the attention benchmark (attention_*.json),
the probe-bank benchmark (leakage_*.json), the attention kernels' work per tile
(kernel_ops_*.json, with the ratios of the oldest run beside the newest), the serving benchmark
(serving_*.json), the LIS table at a catalog's size (lis_scale_*.json), the README's `genrank-jax lis`
run (lis_movielens.md and .json, copies of its lis.md and lis.json, kept by bench/lis_movielens.py), the
sharding benchmark (scaling_*.json) and the own-log ingest benchmark (ingest_prepare_*.json,
ingest_pipeline_*.json). Every table names the machine, jax version, git commit and command behind it;
a kind whose file is absent gets a one-line note instead.

In README.md, between `<!-- headline:start -->` and `<!-- headline:end -->`, it writes a few
headline figures from the same files (and the H200 attention run, device_h200/attention_headline.json),
each linking to the results page. --check exits 1 if either file is stale.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
START, END = "<!-- results:start -->", "<!-- results:end -->"
HEADLINE_START, HEADLINE_END = "<!-- headline:start -->", "<!-- headline:end -->"
RESULTS_PAGE = "docs/results.md"  # the README links to it by this path


def run_time(path: pathlib.Path):
    """When a result was made: the run's unix time that benchlib puts last in the name (a fresh
    clone gives every file the same modification time), else the modification time."""
    stamp = path.stem.rsplit("_", 1)[-1]
    return int(stamp) if stamp.isdigit() else 0, path.stat().st_mtime, path.name


def newest(results: pathlib.Path, pattern: str, exclude: str | None = None) -> pathlib.Path | None:
    """The latest file of a kind (see `run_time`)."""
    files = [p for p in results.glob(pattern) if not (exclude and exclude in p.name)]
    return max(files, key=run_time) if files else None


def machine(header: dict) -> str:
    """One line naming the machine and code behind a table."""
    return (f"{header.get('device_kind', '?')} ({header.get('platform', '?')}), jax {header.get('jax_version', '?')}, "
            f"commit {header.get('git_commit', '?')}")


def table(columns: list[tuple[str, str, str]], rows: list[dict]) -> list[str]:
    """Markdown table; columns are (title, key, format) and a missing value prints as '-'."""
    lines = ["| " + " | ".join(title for title, _, _ in columns) + " |", "|" + " --- |" * len(columns)]
    for row in rows:
        cells = []
        for _, key, fmt in columns:
            value = row.get(key)
            cells.append("-" if value is None else format(value, fmt) if fmt else str(value))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def relative(path: pathlib.Path) -> str:
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


def ablation_section(results: pathlib.Path) -> list[str]:
    path = newest(results, "ablation_*.md", exclude="_validation")
    if path is None:
        return ["### GenRank ablation", "", "_No ablation results yet (run `bench/ablation.py`)._"]
    # the file carries its own title, machine line and command
    return [*path.read_text().rstrip().splitlines(), "", f"_Source: `{relative(path)}`._"]


def streaming_section(results: pathlib.Path) -> list[str]:
    """Issue 22's tables (bench/feed_tables.py) and their plot, copied beside this page."""
    path = results / "issue22" / "tables.md"
    if not path.is_file():
        return ["### Streaming against epochs", "", "_No streaming tables yet (run `bench/feed_tables.py`)._"]
    lines = ["### Streaming against epochs, on the `feed` simulator and ml-100k", "",
             *path.read_text().rstrip().splitlines(), "", f"_Source: `{relative(path)}`._"]
    if (ROOT / "docs" / "img" / "stream_auc.png").is_file():
        lines += ["", "![next-window AUC over time per model](img/stream_auc.png)"]
    return lines


def across_datasets_section(results: pathlib.Path) -> list[str]:
    """Issue 26's table: every model against the features baseline on three datasets."""
    path = results / "issue26" / "table.md"
    if not path.is_file():
        return ["### Across datasets", "", "_No across-datasets table yet (run `bench/across_datasets.py`)._"]
    return ["### Across datasets: every model against the features baseline (epochs)", "",
            *path.read_text().rstrip().splitlines(), "", f"_Source: `{relative(path)}`._"]


def runs(results: pathlib.Path, kind: str):
    """(path, header, rows) of the benchlib files `<kind>_*.json`, newest first."""
    for path in sorted(results.glob(f"{kind}_*.json"), key=run_time, reverse=True):
        data = json.loads(path.read_text())
        yield path, data["header"], data["rows"]


def newest_run(results: pathlib.Path, kind: str):
    """(path, header, rows) of the newest benchlib file `<kind>_*.json`, or None."""
    return next(runs(results, kind), None)


def newest_single_device_run(results: pathlib.Path):
    """(path, header, rows) of the newest probe-bank run made with `--cpu-devices 1`, or None."""
    return next((run for run in runs(results, "leakage") if run[1].get("cpu_devices") == 1), None)


def no_results(title: str, what: str, script: str) -> list[str]:
    return [title, "", f"_No {what} yet (run `bench/{script} --out auto`)._"]


def command_of(header: dict, script: str) -> str:
    return header.get("command") or f"python bench/{script} (arguments not recorded)"


def organization_section(results: pathlib.Path) -> list[str]:
    title = "### Training step: action- vs item-oriented organization"
    run = newest_run(results, "organization")
    if run is None:
        return no_results(title, "organization benchmark", "bench_organization.py")
    path, header, rows = run
    for row in rows:
        row["temp_mib"] = row["temp_bytes"] / 2**20 if row.get("temp_bytes") is not None else None
        row.setdefault("speedup_vs_item", 1.0 if row["organization"] == "item" else None)
    first = rows[0] if rows else {}
    shape = (f"preset {first.get('preset')}, {first.get('block')} block, batch {first.get('batch_size')}, "
             f"{first.get('candidates')} candidates" if first else "")
    command = command_of(header, "bench_organization.py")
    return [title, "", f"Machine: {machine(header)}. Command: `{command}` ({shape}).", "",
            *table([("history N", "history", ""), ("organization", "organization", ""), ("tokens", "tokens", ""),
                    ("step ms", "step_ms", ".1f"), ("exposures/s", "exposures_per_s", ",.0f"),
                    ("temp MiB", "temp_mib", ".1f"), ("speedup vs item", "speedup_vs_item", ".2f")], rows),
            "", f"_Source: `{relative(path)}`._"]


def train_section(results: pathlib.Path, pattern: str = "train_default*.json",
                  title: str = "### `genrank-jax train` (defaults)") -> list[str]:
    path = newest(results, pattern)
    if path is None:
        return [title, "", f"_No training run recorded yet (copy a run's metrics.json to "
                           f"`bench/results/{pattern.replace('*', '')}`)._"]
    report = json.loads(path.read_text())
    header = report.get("machine", {})
    command = report.get("command") or "genrank-jax train " + " ".join(
        f"--{key.replace('_', '-')} {value}" for key, value in (report.get("train") or {}).items()
        if key in ("data", "preset", "architecture", "organization", "block", "steps"))
    oracle = report.get("oracle_auc") or {}
    rows = [dict(task=task, oracle=oracle.get(task), **values) for task, values in report["eval"].items()]
    columns = [("task", "task", ""), ("AUC", "auc", ".4f"), ("GAUC", "gauc", ".4f"), ("log loss", "logloss", ".4f")]
    if oracle:
        columns.append(("oracle AUC", "oracle", ".4f"))
    where = f"Machine: {machine(header)}." if header else "Machine: not recorded in this metrics.json."
    lines = [title, "", f"{where} Command: `{command}`; {report.get('steps')} steps in "
                        f"{report.get('train_seconds', 0):.0f} s on `{report.get('data')}`."]
    best = report.get("best")
    if best:  # runs with a validation slice report the eval metrics of their best validation state
        curve = " ".join(f"{entry['auc']:.4f}" for entry in report.get("validation_curve", []))
        stop = "stopped early" if report.get("stopped_early") else "ran all its steps"
        lines[-1] += (f" Eval metrics of the best validation state: step {best['step']} (epoch {best['epoch']:.1f},"
                      f" validation AUC {best['auc']:.4f}; {stop}). Validation AUC per evaluation: {curve}.")
    return lines + ["", *table(columns, rows), "", f"_Source: `{relative(path)}`._"]


def train_movielens_section(results: pathlib.Path) -> list[str]:
    return train_section(results, "train_ml-100k*.json", "### `genrank-jax train` on MovieLens-100K (defaults)")


def attention_section(results: pathlib.Path) -> list[str]:
    title = "### Attention op: backends"
    run = newest_run(results, "attention")
    if run is None:
        return no_results(title, "attention benchmark", "bench_attention.py")
    path, header, rows = run
    for row in rows:
        row["note"] = row.get("skipped", "")
    speedups = sorted({key for row in rows for key in row if key.startswith("fwd_bwd_speedup_vs_")})
    columns = [("kind", "kind", ""), ("S", "seq_len", ""), ("D", "head_dim", ""), ("impl", "impl", ""),
               ("fwd ms", "fwd_ms", ".2f"), ("fwd+bwd ms", "fwd_bwd_ms", ".2f"), ("fwd TFLOP/s", "fwd_tflops", ".2f"),
               *[(f"fwd+bwd vs {key.rsplit('_vs_', 1)[1]}", key, ".2f") for key in speedups], ("note", "note", "")]
    command = command_of(header, "bench_attention.py")
    interpret = " (Pallas in interpret mode)" if header.get("interpret") else ""
    return [title, "", f"Machine: {machine(header)}{interpret}. Command: `{command}`.", "",
            *table(columns, rows), "", f"_Source: `{relative(path)}`._"]


def _kernel_ops_key(row: dict) -> tuple:
    """(kernel, biases, path, tile); runs before the ordered path had one path per kernel: the
    general one with biases, '-' without."""
    path = row.get("path", "general" if row["biases"] == "on" else "-")
    return row["kernel"], row["biases"], path, row["tile"]


def kernel_ops_section(results: pathlib.Path) -> list[str]:
    title = "### Attention kernels: work per tile next to jax's FA3-style kernel"
    every = [run for run in runs(results, "kernel_ops") if run[1].get("kind", "softmax") == "softmax"]
    if not every:
        return no_results(title, "kernel op counts", "kernel_ops.py")
    path, header, rows = every[0]
    # earlier commits beside the newest: the first run, and the one just before (if another commit)
    earlier, seen = [], {header.get("git_commit")}
    for run in (every[-1], *every[1:2]):
        if run[1].get("git_commit") not in seen:
            seen.add(run[1].get("git_commit"))
            earlier.append(run)
    for number, (_, _, old_rows) in enumerate(earlier):
        ratios = {_kernel_ops_key(r): r["ratio"] for r in old_rows}
        had_paths = any("path" in r for r in old_rows)
        for row in rows:
            key = _kernel_ops_key(row)
            if not had_paths and key[2] == "ordered":  # then every input ran the general path
                key = (*key[:2], "general", key[3])
            row[f"before_{number}"] = ratios.get(key)
    for row in rows:
        row["special_pair"] = f"{row['ours_special']} / {row['jax_special']}"
        if "ours_wait" in row:
            row["wait_pair"] = f"{row['ours_wait']} / {row['jax_wait']}"
    with_paths = any("path" in row for row in rows)
    columns = [("kernel", "kernel", ""), ("biases", "biases", ""),
               *([("path", "path", "")] if with_paths else []), ("tile", "tile", ""),
               ("ours ops/elt", "ours_per_element", ".2f"), ("jax ops/elt", "jax_per_element", ".2f"),
               ("ours / jax", "ratio", ".2f")]
    if any("floor_ratio" in row for row in rows):
        columns.append(("floor / jax", "floor_ratio", ".2f"))
    for number, (_, old_header, _) in enumerate(earlier):
        columns.append((f"before ({old_header.get('git_commit', '?')})", f"before_{number}", ".2f"))
    columns.append(("special ops ours / jax", "special_pair", ""))
    if any("wait_pair" in row for row in rows):
        columns.append(("WGMMA waits ours / jax", "wait_pair", ""))
    command = command_of(header, "kernel_ops.py")
    lines = [title, "", f"Machine: {machine(header)} (lowered for CUDA on the CPU, nothing run). "
             f"Command: `{command}`; S = {header.get('seq_len')}, D = {header.get('head_dim')}, "
             f"tiles {header.get('tiles')}. Arithmetic and special-function ops per thread in the "
             "steady-state loop body, per score element; jax's backward has no causal mode, so its "
             "unmasked loop is the baseline of both tile kinds there."]
    if with_paths:
        lines[-1] += (" With biases each kernel carries two tile maths, picked per sample at run "
                      "time: `ordered` (positions and times ordered along every attended pair, "
                      "t + 1 exact in f32, a bounded position span: GenRank's own tokens) and `general` "
                      "(anything else). "
                      "`floor`: the least the exact contract allows on the ordered path, the "
                      "no-bias loop plus 3 ops per element (ALiBi one per-key add, 0.5 as a "
                      "2-wide vector op; time (t_i + 1) - t_j 0.5, lg2 1, times the slope and "
                      "into the logit 0.5 + 0.5): the 1.4 (forward) and 1.5 (backward) targets "
                      "lie below it.")
    lines += ["", *table(columns, rows), "", f"_Source: `{relative(path)}`"]
    for old_path, _, _ in earlier:
        lines[-1] += f"; before: `{relative(old_path)}`"
    lines[-1] += "._"
    return lines + _kernel_ops_silu(results)


def _kernel_ops_silu(results: pathlib.Path) -> list[str]:
    """The newest `--kind silu` run (HSTU), if any: our SiLU kernels next to jax's softmax one."""
    run = next((r for r in runs(results, "kernel_ops") if r[1].get("kind") == "silu"), None)
    if run is None:
        return []
    path, header, rows = run
    columns = [("kernel", "kernel", ""), ("biases", "biases", ""), ("path", "path", ""),
               ("tile", "tile", ""), ("ours ops/elt", "ours_per_element", ".2f"),
               ("ours / jax softmax", "ratio", ".2f"), ("floor / jax", "floor_ratio", ".2f")]
    return ["", f"SiLU (the HSTU block), commit {header.get('git_commit', '?')}, command "
            f"`{command_of(header, 'kernel_ops.py')}`: the same count for our SiLU kernels, still "
            "divided by jax's softmax kernel (jax has no SiLU one). SiLU has no per-row "
            "invariance, so its ordered path adds the ALiBi term per key and per query: floor = "
            "no-bias loop + 3.5 ops per element.", "", *table(columns, rows), "",
            f"_Source: `{relative(path)}`._"]


def leakage_section(results: pathlib.Path) -> list[str]:
    title = "### LIS probe bank: one program vs a loop over probes"
    run = newest_run(results, "leakage")
    if run is None:
        return no_results(title, "probe-bank benchmark", "bench_leakage.py")
    path, header, rows = run
    peak = next((row["gflops"] for row in rows if row["kind"] == "matmul_peak"), None)
    bank = [{"devices": 1, **row} for row in rows if row["kind"] == "bank_vs_loop"]  # older runs: one device
    lis = next((row for row in rows if row["kind"] == "lis_table"), None)
    command = command_of(header, "bench_leakage.py")
    lines = [title, "", f"Machine: {machine(header)}; f32 matmul peak measured in the same run: "
                        f"{peak:.0f} GFLOP/s. Command: `{command}` (data {header.get('data', '?')}).", "",
             *table([("probes K", "probes", ""), ("devices", "devices", ""), ("stack", "chunk", ""),
                     ("bank epoch s", "bank_epoch_s", ".2f"),
                     ("loop epoch s", "loop_epoch_s", ".2f"), ("bank / loop", "speedup", ".2f"),
                     ("bank / loop, wall incl. compile", "wall_speedup", ".2f"),
                     ("bank GFLOP/s", "bank_gflops", ".1f"), ("share of peak", "fraction_of_peak", ".0%")], bank)]
    single = newest_single_device_run(results)
    if single and header.get("cpu_devices", 1) > 1 and single[1].get("platform") == header.get("platform") == "cpu":
        one = {row["probes"]: row for row in single[2] if row["kind"] == "bank_vs_loop"}
        pairs = [(row, one[row["probes"]]) for row in bank if row["probes"] in one]
        lines += ["", "The same benchmark with the bank on one CPU device (`--cpu-devices 1`, "
                      f"`{relative(single[0])}`, a separate run): bank epoch "
                      + ", ".join(f"{b['bank_epoch_s']:.2f} s at K={b['probes']} ({b['fraction_of_peak']:.0%} of peak)"
                                  for _, b in pairs)
                      + "; one device per core above is "
                      + ", ".join(f"{b['bank_epoch_s'] / a['bank_epoch_s']:.2f}x" for a, b in pairs) + " faster."]
    if lis:
        lines += ["", f"Full LIS table ({lis['leaks']} leak kinds x {lis['horizons']} horizons x {lis['seeds']} seeds, "
                      f"{lis['probes']} probes): {lis['total_s']:.1f} s end to end, {lis['features_s']:.1f} s of it "
                      "building the leaks."]
    return [*lines, "", f"_Source: `{relative(path)}`._"]


def scale_section(results: pathlib.Path) -> list[str]:
    title = "### LIS at a real catalog's size"
    run = newest_run(results, "lis_scale")
    if run is None:
        return [title, "", "_No results yet (run `bench/bench_leakage.py --scale --out auto`)._"]
    path, header, (row, *_) = run
    start, end = header.get("load_average_start", [None])[0], header.get("load_average_end", [None])[0]
    cores = row.get("cores")
    # the run alone keeps every core busy (a load of about `cores` at its end); other jobs show as a
    # load at its start, or beyond the cores at its end
    busy = cores and ((start or 0) > 1.0 or (end or 0) > cores + 1.0)
    lines = [title, "", f"Machine: {machine(header)}, {cores} cores. "
                        f"Command: `{command_of(header, 'bench_leakage.py')}` "
                        f"(data {header.get('data', '?')}).", "",
             f"{row['exposures']:,} exposures, {row['items']:,} items, {row['users']:,} users; {row['train_rows']:,} "
             f"training rows, {row['eval_rows']:,} eval rows. {row['probes']} probes (3 leak kinds x 2 horizons x "
             f"{row['seeds']} seeds with the baseline and {row['placebo_probes']} placebo probes), {row['epochs']} "
             f"epoch(s), trained in {row['probe_groups']} group(s) of probes ({row['state_mb_per_probe']:.0f} MB of "
             f"state a probe; tables learning with {row.get('table_optimizer', 'adam')}).", "",
             *table([("phase", "phase", ""), ("wall s", "wall_s", ".1f"), ("CPU s (user+sys)", "cpu_s", ".1f"),
                     ("peak RSS GB", "peak_rss_gb", ".2f"), ("load average (1 min)", "load1", ".1f")],
                    [{"phase": name, "load1": phase["load"][0], **phase} for name, phase in row["phases"].items()]
                    + [{"phase": "**total**", "wall_s": row["total_wall_s"], "cpu_s": row["total_cpu_s"],
                        "peak_rss_gb": row["peak_rss_gb"], "load1": end}]),
             "", f"Training throughput: {row['train_rows_per_s_per_probe']:,.0f} rows/s per probe "
                 f"({row['train_rows_per_s_per_probe'] * row['probes']:,.0f} probe-rows/s over the bank)."]
    if row["items"] < 10**6:
        lines += ["", f"_A reduced run ({row['items']:,} items, not a real catalog's 10^6): the full-size table has "
                      "not been measured on this machine yet (`python bench/bench_leakage.py --scale --out auto`)._"]
    if busy:
        # a load average lags by about a minute: a start load can be a job that has just ended
        lines += ["", f"Other jobs may have shared the machine (load average {start:.1f} at the start, {end:.1f} "
                      f"at the end, on {cores} cores; the 1-minute average lags a job that just ended): the wall "
                      "times may be inflated. The CPU time is this run's own; on "
                      f"{cores} otherwise idle cores the run would take at least "
                      f"{row['total_cpu_s'] / cores:.0f} s of wall "
                      "time (its CPU time over the cores)."]
    if row.get("table_markdown"):
        lines += ["", row["table_markdown"].rstrip()]
    return [*lines, "", f"_Source: `{relative(path)}`._"]


def serving_section(results: pathlib.Path) -> list[str]:
    title = "### Serving: cached scoring vs full recompute vs one candidate at a time"
    run = newest_run(results, "serving")
    if run is None:
        return no_results(title, "serving benchmark", "bench_serving.py")
    path, header, rows = run
    first = rows[0] if rows else {}
    shape = (f"preset {first.get('preset')}, {first.get('block')} block, micro-batches of "
             f"{first.get('rows_per_batch')} x {first.get('candidates_per_row')} candidate slots" if first else "")
    load = header.get("load_average_before")
    after = header.get("load_average_after")
    load_text = f" Load average (1/5/15 min) at the start: {', '.join(f'{x:.1f}' for x in load)}" if load else ""
    load_text += f", at the end: {', '.join(f'{x:.1f}' for x in after)}" if load and after else ""
    load_text += " (a shared machine)." if load else ""
    command = command_of(header, "bench_serving.py")
    return [title, "", f"Machine: {machine(header)}. Command: `{command}` ({shape}).{load_text} One request = one "
                       "user, N history exposures, M candidates; `cached` reuses a history cache encoded beforehand, "
                       "`cached+encode` charges the encoding to every request, `single` scores one candidate per "
                       "call; candidates/s = M / p50.", "",
            *table([("history N", "history", ""), ("candidates M", "candidates", ""), ("mode", "mode", ""),
                    ("p50 ms", "p50_ms", ".1f"), ("p99 ms", "p99_ms", ".1f"),
                    ("candidates/s", "candidates_per_s", ",.0f"), ("vs full", "ratio_vs_full", ".2f")], rows),
            "", f"_Source: `{relative(path)}`._"]


def _load_text(meta: dict) -> str:
    load = meta.get("load_average") or []
    if len(load) != 2 or None in load:
        return ""
    cores = f" on {meta['cpu_cores']} cores" if meta.get("cpu_cores") else ""
    return f"; load average {load[0]:.1f} at the start, {load[1]:.1f} at the end{cores}"


def lis_section(results: pathlib.Path) -> list[str]:
    """The README's `genrank-jax lis` run (bench/lis_movielens.py keeps its lis.md and lis.json)."""
    path, twin = results / "lis_movielens.md", results / "lis_movielens.json"
    title = "### LIS / AIS on MovieLens-100K"
    if not path.is_file() or not twin.is_file():
        return [title, "", "_No LIS results yet (run `python bench/lis_movielens.py`)._"]
    meta = json.loads(twin.read_text()).get("metadata", {})
    probe = meta.get("probe", {})
    tasks = ", ".join(f"`{task}`" for task in meta.get("tasks", []))
    import datetime

    cutoff = datetime.datetime.fromtimestamp(meta.get("cutoff", 0), datetime.timezone.utc).strftime(
        "%Y-%m-%d %H:%M UTC")
    text = (f"Task {tasks}, cutoff {cutoff}: {meta.get('train_rows', 0):,} "
            f"train / {meta.get('eval_rows', 0):,} eval rows, {meta.get('seeds')} seeds, probe dim {probe.get('dim')}, "
            f"MLP {tuple(probe.get('hidden', ()))}, {probe.get('epochs')} epochs; {meta.get('probes')} probes, "
            f"{meta.get('placebo_probes')} of them placebos; {meta.get('seconds_total', 0):.0f} s end to end "
            f"({meta.get('seconds', 0):.0f} s of probes{_load_text(meta)}). "
            "Δ (LIS / AIS) is the mean paired AUC gain over the "
            "placebo probe of the same seed (a random feature of the same kind and width, the row named in \"vs\"); "
            "raw Δ is the gain over the no-feature baseline. AIS / LIS divides by the largest LIS. The `features` row "
            "is the production baseline (a logistic regression on point-in-time rates and counts), a reference for "
            "the probes, not an LIS.")
    return [title, "", f"Machine: {machine(meta)}. Command: `{meta.get('command', 'not recorded')}` (the README's, "
                       "run by `bench/lis_movielens.py`).", "", text, "", *path.read_text().rstrip().splitlines(),
            "", f"_Source: `{relative(path)}`, `{relative(twin)}`._"]


def scaling_section(results: pathlib.Path) -> list[str]:
    title = "### Sharded training: devices and sizing"
    run = newest_run(results, "scaling")
    if run is None:
        return no_results(title, "scaling benchmark", "bench_scaling.py")
    path, header, rows = run
    steps = [row for row in rows if row["kind"] == "throughput"]
    sizes = [row for row in rows if row["kind"] == "sizing"]
    load = header.get("load_average")
    lines = [title, "", f"Machine: {machine(header)}" + (f", load average {load[0]:.1f} during the run" if load else "")
             + f". Command: `{command_of(header, 'bench_scaling.py')}`."]
    if steps:
        first = steps[0]
        lines += ["", f"Training step, preset {first['preset']}, global batch {first['batch_size']} x "
                      f"{first['seq_len']} "
                      f"tokens, batch split over `data`. Simulated CPU devices share this machine's "
                      f"{header.get('cpu_cores', '?')} cores with the other jobs behind the load average: a check "
                      "that the sharded step runs, not a speedup (a ratio above the core count is more device "
                      "threads winning a larger share of the contended CPU).", "",
                  *table([("mesh", "mesh", ""), ("step ms", "step_ms", ".1f"),
                          ("exposures/s", "exposures_per_s", ",.0f"),
                          ("vs one device", "speedup_vs_1", ".2f")], steps)]
    if sizes:
        first = sizes[0]
        for row in sizes:
            row["fits"] = "yes" if row["fraction_of_h100"] <= 1 else "no"
        lines += ["", f"Paper preset (width 768, 3 blocks) with a {first['items']:.0e}-row item table and "
                      f"{first['users']:.0e} users, AdamW, global batch {first['batch_size']} x {first['seq_len']} "
                      f"tokens, compiled ahead of time for {first['devices']} fake CPU devices without allocating "
                      f"(whole state {first['state_gb']:.0f} GB). Per device, from XLA's memory analysis, "
                      "against one H100's 80 GB (arguments: the state's shards and the batch; temporaries: "
                      "activations, with the xla reference attention's S x S logits, and the gradients, a dense "
                      "one the size of each table shard):", "",
                  *table([("mesh", "mesh", ""), ("tables over", "table_axes", ""),
                          ("GB / device", "per_device_gb", ".1f"),
                          ("arguments GB", "argument_gb", ".1f"), ("temporaries GB", "temp_gb", ".1f"),
                          ("of 80 GB", "fraction_of_h100", ".0%"), ("fits", "fits", "")], sizes)]
    return [*lines, "", f"_Source: `{relative(path)}`._"]


def ingest_section(results: pathlib.Path) -> list[str]:
    """A user's own log at size (bench_ingest.py): prepare/load per log size, and the input pipeline
    next to the training step and the H100 figure."""
    title = "### Your own log at size: preparing it, and the input pipeline against the step"
    prepare, pipeline = newest_run(results, "ingest_prepare"), newest_run(results, "ingest_pipeline")
    if prepare is None and pipeline is None:
        return no_results(title, "ingest benchmark", "bench_ingest.py")
    lines = [title]
    if prepare is None:
        lines += ["", "_No prepare figures yet (run `bench/bench_ingest.py --stage prepare --out auto`)._"]
    else:
        path, header, rows = prepare
        flat = [dict(row, **{f"{stage}_{key}": value for stage in ("prepare", "load", "mapped_load")
                             for key, value in row.get(stage, {}).items()}) for row in rows]
        lines += ["", f"Machine: {machine(header)}, load average {header['load_average_start'][0]:.1f} at the start. "
                      f"Command: `{command_of(header, 'bench_ingest.py')}`. A generated Parquet log "
                      "(`write_synthetic_log`: int64 raw ids, long-tailed users and items, 30 days), prepared "
                      "into array_record records, then loaded twice (the first load saves the arrays, the second "
                      "memory-maps them), each step in its own process (its own peak RSS).", "",
                  *table([("rows", "rows", ",.0f"), ("users", "users", ",.0f"), ("items", "items", ",.0f"),
                          ("Parquet GB", "parquet_gb", ".2f"), ("prepare s", "prepare_wall_s", ".1f"),
                          ("prepare CPU s", "prepare_cpu_s", ".1f"), ("prepare peak GB", "prepare_peak_rss_gb", ".2f"),
                          ("records GB", "records_gb", ".2f"), ("first load s", "load_wall_s", ".1f"),
                          ("first load peak GB", "load_peak_rss_gb", ".2f"),
                          ("mapped load s", "mapped_load_wall_s", ".1f"),
                          ("mapped load peak GB", "mapped_load_peak_rss_gb", ".2f")], flat),
                  "", f"_Source: `{relative(path)}`._"]
    if pipeline is None:
        lines += ["", "_No pipeline figures yet (run `bench/bench_ingest.py --stage pipeline --out auto`)._"]
    else:
        path, header, rows = pipeline
        start, end = header["load_average_start"][0], header["load_average_end"][0]
        h100 = next((row for row in rows if "flops_per_exposure" in row), {})
        lines += ["", f"Machine: {machine(header)}, load average {start:.1f} at the start and {end:.1f} at the end "
                      f"(a shared machine). Command: `{command_of(header, 'bench_ingest.py')}`. Exposures/s of "
                      "sample building and batching alone (the Trainer's builder and batch plan, preset small's "
                      "layout), the training step on this machine, and what an H100 would consume at 400 TFLOP/s "
                      f"given the step's {h100.get('flops_per_exposure', 0):,.0f} model FLOPs per exposure "
                      f"(forward + backward). A built batch holds {h100.get('batch_bytes_per_exposure', 0):,} "
                      f"bytes per exposure: {h100.get('host_to_device_gb_per_s', 0):,.1f} GB/s host to device at "
                      "the H100 figure.", "",
                  *table([("measure", "measure", ""), ("exposures/s", "exposures_per_s", ",.0f"),
                          ("CPU s / 10^6 exposures", "cpu_s_per_million", ".2f"),
                          ("of the H100 figure", "ratio_to_h100", ".4f")], rows),
                  "", f"_Source: `{relative(path)}`._"]
    return lines


def render(results: pathlib.Path) -> str:
    sections = [ablation_section, streaming_section, across_datasets_section, train_movielens_section,
                organization_section, train_section, attention_section, kernel_ops_section, leakage_section,
                serving_section, scale_section, lis_section, scaling_section, ingest_section]
    body = []
    for section in sections:
        body += section(results) + [""]
    return "\n".join(body).rstrip() + "\n"


def headline(results: pathlib.Path) -> str:
    """The README's headline results: one line each, from the same files as the results page (a kind
    whose file is absent is left out), each ending with a link to the page."""
    link = f"([results]({RESULTS_PAGE}))"
    lines = []
    path = newest(results, "train_default*.json")
    if path is not None:
        report = json.loads(path.read_text())
        first, values = next(iter(report["eval"].items()))
        oracle = (report.get("oracle_auc") or {}).get(first)
        lines.append(f"- `{report.get('command', 'genrank-jax train')}` on the simulator: {first} AUC "
                     f"{values['auc']:.4f}"
                     + (f" (the simulator's oracle: {oracle:.4f})" if oracle is not None else "")
                     + f", {report.get('steps')} steps in {report.get('train_seconds', 0):.0f} s of training on a "
                       f"{report.get('machine', {}).get('platform', '?').upper()} {link}.")
    path = newest(results, "train_ml-100k*.json")
    if path is not None:
        report = json.loads(path.read_text())
        first, values = next(iter(report["eval"].items()))
        lines.append(f"- `{report.get('command', 'genrank-jax train')}`: {first} AUC {values['auc']:.4f}, GAUC "
                     f"{values['gauc']:.4f} {link}.")
    streaming = results / "issue22" / "tables.md"
    if streaming.is_file():
        found = [line for line in streaming.read_text().splitlines() if line.startswith("- GenRank − DIN: ")]
        if found:
            goal = [line.removeprefix("- ") for line in streaming.read_text().splitlines()
                    if line.startswith(("- GenRank − item-oriented: ", "- fully visible history − GenRank",
                                        "- loss at history positions − GenRank", "- on synthetic:feed, "))]
            lines.append(f"- On the `feed` simulator, trained as feeds train (one pass in time order, each day scored "
                         f"before it is learnt): GenRank − DIN next-day click AUC "
                         f"{found[0].removeprefix('- GenRank − DIN: ')}; " + "; ".join(goal) + f" {link}.")
            if (ROOT / "docs" / "img" / "stream_auc.png").is_file():
                lines.append("\n  ![next-day AUC over time per model, feed and ml-100k](docs/img/stream_auc.png)\n")
    path = newest(results, "ablation_*.md", exclude="_validation")
    if path is not None:
        found = [line for line in path.read_text().splitlines() if line.startswith("Organization: ")]
        if found:
            data = path.read_text().splitlines()[0].removeprefix("### ").strip()
            lines.append(f"- {data}: {found[0].removeprefix('Organization: ').rstrip('.')} {link}.")
    run = newest_run(results, "organization")
    if run is not None:
        _, header, rows = run
        faster = [f"{row['speedup_vs_item']:.2f}x the exposures/s at history {row['history']}" for row in rows
                  if row.get("organization") == "action" and row.get("speedup_vs_item")]
        if faster:
            lines.append(f"- A training step with one token per exposure (GenRank) instead of item and action tokens: "
                         f"{', '.join(faster)} (on a {header.get('platform', '?').upper()}) {link}.")
    device = results / "device_h200" / "attention_headline.json"
    if device.is_file():
        rows = {row["impl"]: row for row in json.loads(device.read_text())["rows"]}
        best, dpa = rows.get("pallas_mosaic_gpu"), rows.get("dpa")
        if best and dpa:
            lines.append(f"- Attention on an {best['device_kind'].removeprefix('NVIDIA ')} "
                         "(softmax, both biases, bf16, "
                         f"S = {best['seq_len']}, D = {best['head_dim']}): the Mosaic GPU kernel "
                         f"{best['fwd_tflops']:.0f} TFLOP/s forward, {best['fwd_bwd_tflops']:.0f} forward+backward; "
                         f"cuDNN with a materialized bias {dpa['fwd_tflops']:.0f} / {dpa['fwd_bwd_tflops']:.0f} "
                         f"([kernels guide](docs/guides/kernels.md)).")
    run = newest_run(results, "serving")
    if run is not None:
        _, header, rows = run
        cached = [row for row in rows if row.get("mode") == "cached" and row.get("ratio_vs_full")]
        if cached:
            top = max(cached, key=lambda row: row["ratio_vs_full"])
            lines.append(f"- Serving from a cached history: up to {top['ratio_vs_full']:.2f}x the full recompute's "
                         f"candidates/s (history {top['history']}, {top['candidates']} candidates, "
                         f"on a {header.get('platform', '?').upper()}) {link}.")
    twin = results / "lis_movielens.json"
    if twin.is_file():
        rows = json.loads(twin.read_text())["rows"]
        leaks = [row for row in rows if row["kind"] == "leak"]
        shown = [row for row in rows if row["kind"] == "representation" and row.get("fraction_of_bound") is not None]
        if leaks:
            top = max(leaks, key=lambda row: row["delta"])
            text = (f"- LIS on MovieLens-100K (`like`): largest leak `{top['name']}` Δ AUC {top['delta']:+.4f} "
                    f"[{top['ci_low']:+.4f}, {top['ci_high']:+.4f}]")
            if shown:
                best = max(shown, key=lambda row: row["fraction_of_bound"])
                text += f"; the best item feature, `{best['name']}`, reaches AIS / LIS {best['fraction_of_bound']:.2f}"
            reference = next((row for row in rows if row["kind"] == "reference"), None)
            if reference is not None:  # is the probe a competent ranker? (issue 26)
                text += (f"; the `features` baseline scores {reference['auc_mean']:.4f} AUC, "
                         f"{reference['delta']:+.4f} [{reference['ci_low']:+.4f}, {reference['ci_high']:+.4f}] "
                         + ("above the probes without a feature (they rank worse: the LIS is a loose bound)"
                            if reference["ci_low"] > 0 else "against the probes without a feature"))
            lines.append(text + f" {link}.")
    run = newest_run(results, "lis_scale")
    if run is not None:
        _, header, (row, *_) = run
        lines.append(f"- LIS at {row['items']:,} items, {row['exposures']:,} exposures: {row['probes']} probes in "
                     f"{row['total_wall_s']:.0f} s on {row['cores']} CPU cores, {row['peak_rss_gb']:.1f} GB peak "
                     f"{link}.")
    return "\n".join(lines) + "\n"


def fill(readme_text: str, body: str, start: str = START, end: str = END, name: str = "README.md") -> str:
    if start not in readme_text or end not in readme_text:
        raise SystemExit(f"{name} lacks the {start} ... {end} markers")
    head, rest = readme_text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{body}{end}{tail}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--page", default=str(ROOT / RESULTS_PAGE), help="the results page")
    parser.add_argument("--readme", default=str(ROOT / "README.md"), help="the README (headline results)")
    parser.add_argument("--results", default=str(ROOT / "bench" / "results"))
    parser.add_argument("--check", action="store_true", help="exit 1 if the page or the README is not up to date")
    args = parser.parse_args(argv)
    results = pathlib.Path(args.results)
    stale = []
    for path, start, end, body in ((pathlib.Path(args.page), START, END, render(results)),
                                   (pathlib.Path(args.readme), HEADLINE_START, HEADLINE_END, headline(results))):
        text = path.read_text()
        updated = fill(text, body, start, end, relative(path))
        if updated == text:
            print(f"{relative(path)} is up to date")
        elif args.check:
            stale.append(path)
            print(f"{relative(path)} is stale: run python bench/update_readme.py")
        else:
            path.write_text(updated)
            print(f"updated {relative(path)}")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
