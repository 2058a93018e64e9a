"""The results page (docs/results.md) and the README's headline results are rendered from
bench/results, never typed by hand."""

import json
import os
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
import update_readme  # noqa: E402

RESULTS_PAGE = ROOT / update_readme.RESULTS_PAGE


def test_readme_results_match_bench_results():
    assert update_readme.main(["--check"]) == 0, ("docs/results.md or README.md is stale: "
                                                  "run python bench/update_readme.py")


def test_readme_headline_links_to_the_results_page():
    readme = (ROOT / "README.md").read_text()
    headline = readme.split(update_readme.HEADLINE_START, 1)[1].split(update_readme.HEADLINE_END, 1)[0]
    assert len(headline.splitlines()) >= 6 and "(docs/results.md)" in headline and RESULTS_PAGE.is_file()
    assert update_readme.START not in readme  # the tables themselves are on the results page only


def test_readme_results_show_commands_as_typed_without_this_machine_s_paths():
    """A result's command is shown as a user types it: no absolute path of the machine that ran it
    (it used to carry `--data-dir /work/shared/...` and `--out /tmp/...`)."""
    import re

    section = RESULTS_PAGE.read_text().split(update_readme.START, 1)[1].split(update_readme.END, 1)[0]
    commands = re.findall(r"[Cc]ommand:? `([^`]+)`", section)
    assert len(commands) >= 10
    for command in commands:
        absolute = [word for word in command.split() if re.match(r"(\S*[=:])?/", word)]
        assert not absolute, f"{command!r} shows {absolute}"


def test_readme_lis_command_is_the_command_that_made_its_table():
    """`genrank-jax lis` without --task scores every task, while the README's table is for `like`
    alone: the README's command now is, word for word, the one whose report the table is."""
    import lis_movielens

    recorded = json.loads((ROOT / "bench" / "results" / "lis_movielens.json").read_text())["metadata"]["command"]
    assert recorded == lis_movielens.readme_command()
    assert "--task like" in recorded
    table = (ROOT / "bench" / "results" / "lis_movielens.md").read_text().strip()
    assert table in RESULTS_PAGE.read_text()  # the output shown is that run's output


def _leakage_file(folder: pathlib.Path, stamp: int, bank_epoch: float, cpu_devices: int | None = None) -> pathlib.Path:
    rows = [{"kind": "matmul_peak", "gflops": 200.0},
            {"kind": "bank_vs_loop", "probes": 8, "chunk": 8, "bank_epoch_s": bank_epoch, "loop_epoch_s": 0.75,
             "speedup": 0.75 / bank_epoch, "wall_speedup": 1.1, "bank_gflops": 90.0, "fraction_of_peak": 0.45},
            {"kind": "lis_table", "leaks": 3, "horizons": 2, "seeds": 8, "probes": 56, "features_s": 3.0,
             "total_s": 15.0}]
    header = {"device_kind": "cpu", "platform": "cpu", "jax_version": "0", "git_commit": "abc", "data": "x"}
    if cpu_devices is not None:
        header["cpu_devices"] = cpu_devices
        rows[1]["devices"] = cpu_devices
    path = folder / f"leakage_cpu_abc_{stamp}.json"
    path.write_text(json.dumps({"header": header, "rows": rows}))
    return path


def test_probe_bank_section_shows_the_newest_run(tmp_path):
    old = _leakage_file(tmp_path, 100, bank_epoch=1.5)
    new = _leakage_file(tmp_path, 200, bank_epoch=0.5)
    os.utime(old, (0, 2_000_000_000))  # newer on disk, older run: the name's time decides
    text = "\n".join(update_readme.leakage_section(tmp_path))
    assert "| 8 | 1 | 8 | 0.50 | 0.75 | 1.50 | 1.10 | 90.0 | 45% |" in text  # an older run: one device
    assert new.name in text and "56 probes): 15.0 s end to end" in text
    assert "one CPU device (`--cpu-devices 1`" not in text  # nothing to compare with


def test_probe_bank_section_compares_with_the_newest_one_device_run(tmp_path):
    _leakage_file(tmp_path, 100, bank_epoch=2.0, cpu_devices=1)
    one = _leakage_file(tmp_path, 200, bank_epoch=0.8, cpu_devices=1)
    spread = _leakage_file(tmp_path, 300, bank_epoch=0.5, cpu_devices=2)
    text = "\n".join(update_readme.leakage_section(tmp_path))
    assert "| 8 | 2 | 8 | 0.50 |" in text and spread.name in text
    assert f"`{update_readme.relative(one)}`" in text and "0.80 s at K=8" in text and "1.60x faster" in text


def test_missing_results_give_a_note_not_an_error(tmp_path):
    assert "No probe-bank benchmark yet" in "\n".join(update_readme.leakage_section(tmp_path))


def test_train_section_reports_the_best_validation_state(tmp_path):
    report = {"machine": {"device_kind": "cpu", "platform": "cpu", "jax_version": "0", "git_commit": "abc"},
              "command": "genrank-jax train --data movielens:100k --data-dir d", "data": "movielens:100k",
              "steps": 330, "train_seconds": 40.0, "oracle_auc": None,
              "eval": {"like": {"auc": 0.7412, "gauc": 0.7, "logloss": 0.6}},
              "best": {"step": 198, "epoch": 6.0, "auc": 0.7655}, "stopped_early": True,
              "validation_curve": [{"step": 33 * e, "epoch": e, "auc": 0.7 + e / 100} for e in (1, 2)]}
    (tmp_path / "train_ml-100k.json").write_text(json.dumps(report))
    text = "\n".join(update_readme.train_movielens_section(tmp_path))
    assert "best validation state: step 198 (epoch 6.0, validation AUC 0.7655; stopped early)" in text
    assert "| like | 0.7412 |" in text and "0.7100 0.7200" in text
    assert "No training run recorded" in "\n".join(update_readme.train_section(tmp_path))  # no train_default


def test_scaling_section_shows_throughput_and_sizing(tmp_path):
    assert "No scaling benchmark yet" in "\n".join(update_readme.scaling_section(tmp_path))
    header = {"device_kind": "cpu", "platform": "cpu", "jax_version": "0", "git_commit": "abc",
              "command": "python bench/bench_scaling.py --out auto", "load_average": [3.0, 2.0, 1.0], "cpu_cores": 2}
    rows = [{"kind": "throughput", "mesh": "data=1,model=1", "preset": "small", "batch_size": 64, "seq_len": 64,
             "step_ms": 100.0, "exposures_per_s": 5000.0, "speedup_vs_1": 1.0},
            {"kind": "throughput", "mesh": "data=2,model=1", "preset": "small", "batch_size": 64, "seq_len": 64,
             "step_ms": 80.0, "exposures_per_s": 6250.0, "speedup_vs_1": 1.25},
            {"kind": "sizing", "mesh": "data=8,model=8", "table_axes": "model", "items": 10**8, "users": 10**6,
             "batch_size": 2048, "seq_len": 480, "devices": 64, "state_gb": 925.0, "per_device_gb": 130.0,
             "argument_gb": 116.0, "temp_gb": 14.0, "fraction_of_h100": 1.625}]
    (tmp_path / "scaling_cpu_abc_100.json").write_text(json.dumps({"header": header, "rows": rows}))
    text = "\n".join(update_readme.scaling_section(tmp_path))
    assert "load average 3.0" in text and "| data=2,model=1 | 80.0 | 6,250 | 1.25 |" in text
    assert "| data=8,model=8 | model | 130.0 | 116.0 | 14.0 | 162% | no |" in text and "1e+08-row item table" in text


def _kernel_ops_file(folder: pathlib.Path, stamp: int, commit: str, ratio: float) -> pathlib.Path:
    row = {"kernel": "forward", "biases": "off", "tile": "interior", "ours_arith": 300,
           "jax_arith": 244, "ours_special": 66, "jax_special": 66, "ours_wgmma": 16, "jax_wgmma": 16,
           "ours_per_element": 4.84 * ratio, "jax_per_element": 4.84, "ratio": ratio}
    header = {"device_kind": "cpu", "platform": "cpu", "jax_version": "0.11.2", "git_commit": commit,
              "command": "python bench/kernel_ops.py --out auto", "seq_len": 1024, "head_dim": 128,
              "tiles": "forward 64x128"}
    path = folder / f"kernel_ops_cpu_{commit}_{stamp}.json"
    path.write_text(json.dumps({"header": header, "rows": [row]}))
    return path


def test_kernel_ops_section_shows_newest_beside_the_first_run(tmp_path):
    _kernel_ops_file(tmp_path, 100, "old", ratio=2.85)
    new = _kernel_ops_file(tmp_path, 200, "new", ratio=0.99)
    text = "\n".join(update_readme.kernel_ops_section(tmp_path))
    assert "| forward | off | interior | 4.79 | 4.84 | 0.99 | 2.85 | 66 / 66 |" in text
    assert "before (old)" in text and new.name in text


def test_kernel_ops_section_without_an_older_commit_has_no_before_column(tmp_path):
    _kernel_ops_file(tmp_path, 100, "same", ratio=1.5)
    text = "\n".join(update_readme.kernel_ops_section(tmp_path))
    assert "before" not in text and "| forward | off | interior | 7.26 | 4.84 | 1.50 | 66 / 66 |" in text


def test_kernel_ops_section_with_paths_shows_the_first_and_previous_runs(tmp_path):
    _kernel_ops_file(tmp_path, 100, "first", ratio=2.85)
    old_general = _kernel_ops_file(tmp_path, 150, "previous", ratio=1.0)
    data = json.loads(old_general.read_text())  # a run before paths: its biased row is 'general'
    data["rows"].append({**data["rows"][0], "biases": "on", "ratio": 2.34})
    old_general.write_text(json.dumps(data))
    new = _kernel_ops_file(tmp_path, 200, "new", ratio=0.99)
    data = json.loads(new.read_text())
    base = {**data["rows"][0], "ours_wait": 3, "jax_wait": 3}
    data["rows"] = [{**base, "path": "-"},
                    {**base, "biases": "on", "path": "ordered", "ratio": 1.61, "floor_ratio": 1.61},
                    {**base, "biases": "on", "path": "general", "ratio": 2.34}]
    new.write_text(json.dumps(data))
    text = "\n".join(update_readme.kernel_ops_section(tmp_path))
    assert "before (first) | before (previous) |" in text and "floor / jax" in text
    assert "| forward | off | - | interior | 4.79 | 4.84 | 0.99 | - | 2.85 | 1.00 | 66 / 66 | 3 / 3 |" in text
    # before the ordered path existed, the same inputs ran the general one
    assert "| forward | on | ordered | interior | 4.79 | 4.84 | 1.61 | 1.61 | - | 2.34 | 66 / 66 | 3 / 3 |" in text
    assert "| forward | on | general | interior | 4.79 | 4.84 | 2.34 | - | - | 2.34 | 66 / 66 | 3 / 3 |" in text


def test_kernel_ops_silu_run_gets_its_own_table(tmp_path):
    softmax = _kernel_ops_file(tmp_path, 100, "soft", ratio=1.5)
    silu = _kernel_ops_file(tmp_path, 200, "hstu", ratio=1.65)  # newer, but not the main table
    data = json.loads(silu.read_text())
    data["header"]["kind"] = "silu"
    data["rows"] = [{**data["rows"][0], "biases": "on", "path": "ordered", "floor_ratio": 1.64}]
    silu.write_text(json.dumps(data))
    text = "\n".join(update_readme.kernel_ops_section(tmp_path))
    assert "| forward | off | interior | 7.26 | 4.84 | 1.50 | 66 / 66 |" in text and softmax.name in text
    assert "SiLU (the HSTU block), commit hstu" in text and silu.name in text
    assert "| forward | on | ordered | interior | 7.99 | 1.65 | 1.64 |" in text


def test_serving_section_shows_every_mode_and_the_load_average(tmp_path):
    assert "No serving benchmark yet" in "\n".join(update_readme.serving_section(tmp_path))
    header = {"device_kind": "cpu", "platform": "cpu", "jax_version": "0", "git_commit": "abc",
              "command": "python bench/bench_serving.py --out auto", "load_average_before": [3.25, 2.0, 1.5]}
    rows = [dict(history=1024, candidates=500, mode=mode, p50_ms=p50, p99_ms=p50 * 2, candidates_per_s=500 / p50 * 1e3,
                 ratio_vs_full=100.0 / p50, preset="small", block="transformer", rows_per_batch=8,
                 candidates_per_row=64) for mode, p50 in (("cached", 10.0), ("full", 100.0), ("single", 400.0))]
    path = tmp_path / "serving_cpu_abc_100.json"
    path.write_text(json.dumps({"header": header, "rows": rows}))
    text = "\n".join(update_readme.serving_section(tmp_path))
    assert "| 1024 | 500 | cached | 10.0 | 20.0 | 50,000 | 10.00 |" in text
    assert "| 1024 | 500 | single | 400.0 | 800.0 | 1,250 | 0.25 |" in text
    assert "Load average (1/5/15 min) at the start: 3.2, 2.0, 1.5 (a shared machine)" in text and path.name in text


def _scale_file(folder: pathlib.Path, stamp: int, load: float, end: float | None = None) -> pathlib.Path:
    phase = {"wall_s": 10.0, "cpu_s": 18.0, "peak_rss_gb": 1.5, "load": [load, load, load]}
    row = {"kind": "lis_scale", "exposures": 5_000_000, "items": 1_000_000, "users": 200_000, "train_rows": 4_000_000,
           "eval_rows": 1_000_000, "epochs": 1, "seeds": 8, "probes": 80, "placebo_probes": 24, "probe_groups": 10,
           "state_mb_per_probe": 230.4, "total_wall_s": 500.0, "total_cpu_s": 900.0, "peak_rss_gb": 6.5,
           "train_rows_per_s_per_probe": 9000.0, "phases": {"simulate": phase, "probes": phase}, "cores": 2,
           "table_markdown": "| feature | kind |\n| --- | --- |\n| baseline | baseline |\n"}
    header = {"device_kind": "cpu", "platform": "cpu", "jax_version": "0", "git_commit": "abc", "data": "catalog",
              "load_average_start": [load, 1.0, 1.0], "load_average_end": [load if end is None else end, 1.0, 1.0],
              "command": "python bench/bench_leakage.py --scale --out auto"}
    path = folder / f"lis_scale_cpu_abc_{stamp}.json"
    path.write_text(json.dumps({"header": header, "rows": [row]}))
    return path


def test_scale_section_reports_time_memory_throughput_and_contention(tmp_path):
    assert "No results yet" in "\n".join(update_readme.scale_section(tmp_path))
    _scale_file(tmp_path, 100, load=1.0)
    quiet = "\n".join(update_readme.scale_section(tmp_path))
    assert "| **total** | 500.0 | 900.0 | 6.50 | 1.0 |" in quiet and "| simulate | 10.0 | 18.0 | 1.50 | 1.0 |" in quiet
    assert "9,000 rows/s per probe" in quiet and "10 group(s)" in quiet and "| baseline | baseline |" in quiet
    assert "Other jobs may have shared the machine" not in quiet and "A reduced run" not in quiet
    _scale_file(tmp_path, 150, load=0.3, end=2.2)  # idle at the start, its own two cores' load at the end
    assert "Other jobs may have shared the machine" not in "\n".join(update_readme.scale_section(tmp_path))
    busy = _scale_file(tmp_path, 200, load=12.0)
    text = "\n".join(update_readme.scale_section(tmp_path))
    assert busy.name in text and "Other jobs may have shared the machine (load average 12.0" in text
    assert "at least 450 s of wall" in text
    # the probe-bank section does not mistake these files for its own
    assert "No probe-bank benchmark yet" in "\n".join(update_readme.leakage_section(tmp_path))


def test_ingest_section_renders_prepare_and_pipeline_runs(tmp_path):
    header = {"device_kind": "cpu", "platform": "cpu", "jax_version": "0", "git_commit": "abc",
              "command": "python bench/bench_ingest.py", "load_average_start": [2.0, 1.0, 1.0],
              "load_average_end": [3.0, 1.0, 1.0]}
    assert "No ingest benchmark yet" in "\n".join(update_readme.ingest_section(tmp_path))
    stage = {"wall_s": 12.5, "cpu_s": 11.0, "peak_rss_gb": 1.46}
    prepare = [{"rows": 10_000_000, "users": 1_000_000, "items": 1_000_000, "parquet_gb": 0.21, "write_s": 3.0,
                "prepare": stage, "records_gb": 0.9, "load": dict(stage, wall_s=20.0), "mapped_load": stage,
                "loaded_arrays_gb": 0.3, "exposures": 10_000_000, "user_rows": 900_000, "item_rows": 800_000}]
    (tmp_path / "ingest_prepare_cpu_abc_100.json").write_text(json.dumps({"header": header, "rows": prepare}))
    text = "\n".join(update_readme.ingest_section(tmp_path))
    assert ("| 10,000,000 | 1,000,000 | 1,000,000 | 0.21 | 12.5 | 11.0 | 1.46 | 0.90 | 20.0 | 1.46 | 12.5 | 1.46 |"
            in text)
    assert "No pipeline figures yet" in text
    pipeline = [{"measure": "pipeline, 1 process", "exposures_per_s": 1_500_000, "cpu_s_per_million": 0.6,
                 "ratio_to_h100": 0.02},
                {"measure": "H100 at 400 TFLOP/s (model FLOPs)", "exposures_per_s": 75_000_000, "ratio_to_h100": 1.0,
                 "flops_per_exposure": 5_333_333, "batch_bytes_per_exposure": 1500, "host_to_device_gb_per_s": 112.5}]
    (tmp_path / "ingest_pipeline_cpu_abc_200.json").write_text(json.dumps({"header": header, "rows": pipeline}))
    text = "\n".join(update_readme.ingest_section(tmp_path))
    assert "| pipeline, 1 process | 1,500,000 | 0.60 | 0.0200 |" in text and "| H100 at 400 TFLOP/s" in text
    assert "5,333,333 model FLOPs per exposure" in text and "112.5 GB/s host to device" in text
    assert "load average 2.0 at the start and 3.0 at the end" in text
