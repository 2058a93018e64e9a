"""The README's results section is rendered from bench/results, never typed by hand."""

import json
import os
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
import update_readme  # noqa: E402


def test_readme_results_match_bench_results():
    assert update_readme.main(["--check"]) == 0, "README.md is stale: run python bench/update_readme.py"


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


def _scale_file(folder: pathlib.Path, stamp: int, load: float) -> pathlib.Path:
    phase = {"wall_s": 10.0, "cpu_s": 18.0, "peak_rss_gb": 1.5, "load": [load, load, load]}
    row = {"kind": "lis_scale", "exposures": 5_000_000, "items": 1_000_000, "users": 200_000, "train_rows": 4_000_000,
           "eval_rows": 1_000_000, "epochs": 1, "seeds": 8, "probes": 80, "placebo_probes": 24, "probe_groups": 10,
           "state_mb_per_probe": 230.4, "total_wall_s": 500.0, "total_cpu_s": 900.0, "peak_rss_gb": 6.5,
           "train_rows_per_s_per_probe": 9000.0, "phases": {"simulate": phase, "probes": phase}, "cores": 2,
           "table_markdown": "| feature | kind |\n| --- | --- |\n| baseline | baseline |\n"}
    header = {"device_kind": "cpu", "platform": "cpu", "jax_version": "0", "git_commit": "abc", "data": "catalog",
              "load_average_start": [load, 1.0, 1.0], "load_average_end": [load, 1.0, 1.0],
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
    assert "other jobs shared the machine" not in quiet
    busy = _scale_file(tmp_path, 200, load=12.0)
    text = "\n".join(update_readme.scale_section(tmp_path))
    assert busy.name in text and "other jobs shared the machine (load average 12.0" in text
    assert "at least 450 s of wall" in text
    # the probe-bank section does not mistake these files for its own
    assert "No probe-bank benchmark yet" in "\n".join(update_readme.leakage_section(tmp_path))
