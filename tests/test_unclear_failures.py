"""Failures that used to be unhelpful (issue 21): each is now one line that says what to do."""

from __future__ import annotations

import logging
import pathlib

import pytest

from genrank_jax.cli import main
from genrank_jax.training.checkpoint import CheckpointError, Checkpoints

FAST = ["--data", "synthetic:tests", "--preset", "tiny", "--steps", "2", "--batch-size", "8", "--max-history", "16",
        "--no-progress"]


def one_error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_out_naming_a_file(tmp_path, capsys):
    (tmp_path / "taken").write_text("x")
    assert main(["train", *FAST, "--out", str(tmp_path / "taken")]) == 2
    assert "is a file, not a folder" in one_error_line(capsys)


def test_resume_of_a_folder_that_does_not_exist(tmp_path, capsys):
    assert main(["train", *FAST, "--resume", "--out", str(tmp_path / "mistyped")]) == 2
    line = one_error_line(capsys)
    assert "does not exist, so there is no run to resume" in line and "drop --resume" in line
    assert not (tmp_path / "mistyped").exists()


@pytest.mark.parametrize("leftover", [None, "metrics_of_a_run_without_checkpoints", "checkpoints/"])
def test_resume_of_a_folder_without_checkpoints_is_refused(tmp_path, capsys, leftover):
    out = tmp_path / "other"
    out.mkdir()
    if leftover == "checkpoints/":
        (out / "checkpoints").mkdir()  # a run killed before its first save
    elif leftover:
        (out / leftover).write_text("x")  # a folder that is not a run's
    assert main(["train", *FAST, "--resume", "--out", str(out)]) == 2
    line = one_error_line(capsys)
    assert f"--resume: {out} holds no checkpoint to resume" in line and "drop --resume" in line
    assert "resumed at step 0" not in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ([leftover.rstrip("/")] if leftover else [])


def test_export_of_a_missing_step_lists_the_saved_ones(tmp_path, capsys):
    assert main(["train", *FAST, "--checkpoint-every", "1", "--out", str(tmp_path / "run")]) == 0
    capsys.readouterr()
    assert main(["export", "--checkpoint", str(tmp_path / "run" / "checkpoints"), "--step", "99",
                 "--out", str(tmp_path / "scorer")]) == 2
    line = one_error_line(capsys)
    assert "no checkpoint at step 99" in line and "saved steps are [1, 2]" in line and "corrupt" not in line


def test_disk_full_keeps_the_reason_in_the_one_line(tmp_path, monkeypatch):
    import numpy as np

    checkpoints = Checkpoints(tmp_path / "c", config_json="{}")

    def full(*args, **kwargs):
        try:
            raise OSError(28, "No space left on device")
        except OSError as cause:
            raise ValueError("Error writing to tensorstore spec {\n 'driver': 'zarr', ... 40 more lines\n}") from cause

    monkeypatch.setattr(checkpoints.manager, "save", full)
    with pytest.raises(CheckpointError, match="No space left on device") as error:
        checkpoints.save(1, {"x": np.ones(3, np.float32)})
    assert "\n" not in str(error.value) and "40 more lines" not in str(error.value)


def test_no_orbax_noise_for_checkpoints_between_validations(tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    assert main(["train", *FAST, "--steps", "4", "--checkpoint-every", "1", "--validation-fraction", "0.2",
                 "--eval-every", "2", "--out", str(tmp_path / "run")]) == 0
    assert not [r for r in caplog.records if "did not provide metrics" in r.getMessage()]


def test_a_second_writer_into_one_folder_is_refused(tmp_path, capsys):
    import os
    import socket

    out = tmp_path / "run"
    out.mkdir()
    (out / ".genrank-jax.lock").write_text(f"{os.getpid()} {socket.gethostname()} genrank-jax train")  # alive
    assert main(["train", *FAST, "--out", str(out)]) == 2
    line = one_error_line(capsys)
    assert f"being written by another run (process {os.getpid()}" in line
    (out / ".genrank-jax.lock").write_text(f"999999999 {socket.gethostname()} genrank-jax train")  # gone
    assert main(["train", *FAST, "--out", str(out)]) == 0
    assert not (out / ".genrank-jax.lock").exists()  # released at the end


def test_a_lock_that_cannot_be_taken_is_never_skipped(tmp_path, monkeypatch):
    import os
    import socket

    from genrank_jax.cli.output_folder import LOCK_NAME, writer_lock
    from genrank_jax.training import OutputInUseError

    lock, real_open = tmp_path / LOCK_NAME, os.open

    def contended(path, flags, *args):  # every attempt finds a dead run's lock again (other starters)
        if pathlib.Path(path) == lock:
            lock.write_text(f"999999999 {socket.gethostname()} genrank-jax train")
            raise FileExistsError(path)
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", contended)
    with pytest.raises(OutputInUseError, match="could not take the lock"):
        with writer_lock(tmp_path, "genrank-jax train"):
            pass


def test_batch_larger_than_the_data(tmp_path, capsys):
    assert main(["train", *FAST, "--batch-size", "1000000000", "--out", str(tmp_path / "run")]) == 2
    assert "batch_size 1,000,000,000 is larger than the" in one_error_line(capsys)


@pytest.mark.parametrize("flags, message", [
    ([], "--distributed found no cluster to join"),
    (["--coordinator", "localhost:1"], "missing --num-processes, --process-id"),
    (["--coordinator", "127.0.0.1:9", "--num-processes", "2", "--process-id", "1", "--distributed-timeout", "0.5"],
     "the coordinator 127.0.0.1:9 did not answer within 0.5 s"),
])
def test_distributed_errors_name_flags_and_address(tmp_path, capsys, flags, message):
    import time

    import jax

    jax.devices()  # the backend is up (as after any earlier test): the messages must not depend on it
    started = time.monotonic()
    assert main(["train", *FAST, "--distributed", *flags, "--out", str(tmp_path / "run")]) == 2
    assert message in one_error_line(capsys)
    assert time.monotonic() - started < 60


def test_distributed_timeout_bounds_jax_own_wait(tmp_path, capsys, monkeypatch):
    import inspect

    import jax

    if "initialization_timeout" not in inspect.signature(jax.distributed.initialize).parameters:
        pytest.skip("this jax takes no initialization_timeout")
    calls = []

    def initialize(coordinator_address=None, num_processes=None, process_id=None, initialization_timeout=300):
        calls.append(initialization_timeout)  # process 0 would wait this long here for the others
        raise RuntimeError("stopped by the test")

    monkeypatch.setattr(jax.distributed, "initialize", initialize)
    assert main(["train", *FAST, "--distributed", "--coordinator", "localhost:1", "--num-processes", "2",
                 "--process-id", "0", "--distributed-timeout", "6.5", "--out", str(tmp_path / "run")]) == 2
    # jax's own bound lies 10 s past ours: the thread waiting for jax ends the wait first (with one
    # line, test_distributed_wait_ends_on_time_and_on_ctrl_c), jax's C++ abort never comes
    assert calls == [17]
    assert not (tmp_path / "run").exists()  # nothing saved: the folder the run made is gone


def _train_waiting_for_a_second_process(tmp_path, timeout: float):
    """A `genrank-jax train` process 0 of 2 whose second process never starts, and its first line."""
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as probe:  # a free port for the coordinator
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    root = pathlib.Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    process = subprocess.Popen(
        [sys.executable, "-m", "genrank_jax", "train", *FAST, "--distributed", "--coordinator", f"127.0.0.1:{port}",
         "--num-processes", "2", "--process-id", "0", "--distributed-timeout", str(timeout),
         "--out", str(tmp_path / "run")], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    lines = []
    for line in process.stdout:  # wait until it waits
        lines.append(line)
        if line.startswith("joining"):
            break
    assert lines and lines[-1].startswith("joining 2 processes"), "".join(lines) + process.stderr.read()
    return process


def test_distributed_wait_ends_on_time_and_on_ctrl_c(tmp_path):
    """jax.distributed.initialize blocks in C++, where Python never sees Ctrl-C: it used to ignore it
    until its own deadline, then abort with a C++ stack trace. Both ends are now one line, at once."""
    import signal
    import time

    process = _train_waiting_for_a_second_process(tmp_path, timeout=120)
    time.sleep(1.0)  # inside jax's wait
    sent = time.monotonic()
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=30)
    assert time.monotonic() - sent < 1.0, err
    assert process.returncode == 130 and err.strip() == "genrank-jax train: interrupted", err
    assert not (tmp_path / "run").exists()  # it saved nothing: the folder it made is gone

    process = _train_waiting_for_a_second_process(tmp_path, timeout=2)
    started = time.monotonic()
    _, err = process.communicate(timeout=60)
    assert time.monotonic() - started < 10, err
    assert process.returncode == 2 and len(err.strip().splitlines()) == 1, err
    assert "the processes did not all join within 2 s" in err
