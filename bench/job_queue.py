"""Run a list of benchmark commands, several at a time, within a deadline, packing results as they come.

    python3 bench/job_queue.py JOBS_FILE --out DIR --parallel 12 --deadline-s 520

JOBS_FILE: one job per line, `NAME<TAB>ARGS` (ARGS: the arguments of `bench/ablation.py`, where
`{out}` is replaced by DIR/NAME), in order of value: jobs start in file order as slots free up, and
none starts once less than `--min-left-s` of the deadline is left. At the deadline the jobs still
running are stopped (ablation.py has written every finished (model, seed) row by then). Every 20
seconds and at the end, DIR's JSON and log files are packed into DIR/../results.tar.gz (or --archive) (written
whole, then renamed), so a call stopped from outside still returns what had finished. Built for
one call on a lent GPU machine (bench/device_tables.sh), where many small models share one GPU.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shlex
import subprocess
import sys
import tarfile
import time

HERE = pathlib.Path(__file__).resolve().parent


def read_jobs(path: pathlib.Path) -> list[tuple[str, list[str]]]:
    jobs = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        name, sep, arguments = line.partition("\t")
        if not sep or not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
            raise SystemExit(f"{path}:{number}: expected NAME<TAB>ARGS with a plain NAME, got {line!r}")
        jobs.append((name, shlex.split(arguments)))
    return jobs


def pack(out: pathlib.Path, archive: pathlib.Path) -> None:
    partial = archive.with_name(archive.name + ".partial")
    with tarfile.open(partial, "w:gz") as tar:
        for path in sorted(out.rglob("*")):
            if path.is_file() and path.suffix in (".json", ".md", ".log", ".txt"):
                tar.add(path, arcname=str(path.relative_to(out.parent)))
    os.replace(partial, archive)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("jobs", type=pathlib.Path)
    parser.add_argument("--out", type=pathlib.Path, required=True)
    parser.add_argument("--parallel", type=int, default=4)
    parser.add_argument("--deadline-s", type=float, default=520.0)
    parser.add_argument("--min-left-s", type=float, default=45.0, help="start no job with less time than this left")
    parser.add_argument("--archive", type=pathlib.Path, default=None,
                        help="where the packed results go (default: OUT/../results.tar.gz)")
    parser.add_argument("--python", default=sys.executable)
    args = parser.parse_args(argv)
    jobs = read_jobs(args.jobs)
    archive = args.archive or args.out.parent / "results.tar.gz"
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    left = lambda: args.deadline_s - (time.monotonic() - started)
    pending, running, finished = list(jobs), {}, []
    last_pack = 0.0
    with open(args.out / "queue.log", "a") as log:
        def note(text: str) -> None:
            line = f"[{time.monotonic() - started:6.0f} s] {text}"
            print(line, flush=True)
            log.write(line + "\n")
            log.flush()

        while pending or running:
            for name, (process, since, handle) in list(running.items()):
                if process.poll() is not None:
                    handle.close()
                    finished.append((name, process.returncode, time.monotonic() - since))
                    note(f"done {name}: exit {process.returncode} after {time.monotonic() - since:.0f} s")
                    del running[name]
            while pending and len(running) < args.parallel and left() > args.min_left_s:
                name, arguments = pending.pop(0)
                target = args.out / name
                arguments = [a.replace("{out}", str(target)) for a in arguments]
                handle = open(args.out / f"{name}.log", "w")
                command = [args.python, str(HERE / "from_checkout.py"), str(HERE / "ablation.py"), *arguments]
                running[name] = (subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT), time.monotonic(),
                                 handle)
                note(f"start {name}: {shlex.join(arguments)}")
            if left() <= args.min_left_s and pending:
                note(f"not started (deadline): {', '.join(name for name, _ in pending)}")
                pending.clear()
            if left() <= 0:
                for name, (process, since, _) in running.items():
                    process.terminate()
                    note(f"stopped {name} at the deadline after {time.monotonic() - since:.0f} s")
                for process, _, handle in running.values():
                    try:
                        process.wait(10)
                    except subprocess.TimeoutExpired:
                        process.kill()
                    handle.close()
                running.clear()
            if time.monotonic() - last_pack > 20:
                pack(args.out, archive)
                last_pack = time.monotonic()
            time.sleep(1.0)
        failed = [name for name, code, _ in finished if code != 0]
        note(f"finished {len(finished) - len(failed)} of {len(jobs)} jobs" + (f"; failed: {failed}" if failed else ""))
    pack(args.out, archive)
    return 0


if __name__ == "__main__":
    sys.exit(main())
