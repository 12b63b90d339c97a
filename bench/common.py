"""What every benchmark shares: the machine description, side-by-side
timing, child processes measured for wall time and peak memory, and the one
JSON object each benchmark prints as the last line of its output.

Every figure a benchmark reports is a ratio of two things measured in the
same process (or the same run), interleaved, so that load from other
processes on a shared machine hits both sides alike.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# rlrs and Snakemake of the interpreter running the benchmark, whatever PATH holds.
RLRS = [sys.executable, "-m", "rlrs"]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def machine() -> dict:
    """Where a figure came from: cores, CPU model, torch, load at the time."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"nproc": os.cpu_count(), "cpu": cpu, "python": platform.python_version(), "load_1min": os.getloadavg()[0]}
    if "torch" in sys.modules:  # only report torch where the benchmark uses it (no import cost elsewhere)
        info["torch"] = sys.modules["torch"].__version__
    return info


def emit(benchmark: str, goal: str, figures: dict, **details) -> dict:
    """Print the benchmark's result as ONE JSON object on the last line."""
    out = {"benchmark": benchmark, "goal": goal, **figures, **details, "machine": machine()}
    print(json.dumps(out, default=str), flush=True)
    return out


def log(*parts) -> None:
    """Progress for humans, on stderr, so stdout's last line stays the JSON."""
    print(*parts, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Best:
    """Least disturbed seconds per call: by the wall clock, and by this
    thread's CPU time (which leaves out time the thread was waiting for a
    core: robust under load, but a true cost only where all the work runs
    on the calling thread, i.e. with one torch thread)."""

    wall: float
    cpu: float


def interleaved_best(fns: dict, rounds: int, calls: int) -> dict[str, Best]:
    """Best (minimum) seconds per call of each function, timed in `rounds`
    rounds of `calls` calls each, the functions taking turns within a round
    and the order reversed every other round. Each function gets one untimed
    warm-up call first. The minimum is the least disturbed estimate on a
    machine shared with other work."""
    for f in fns.values():
        f()
    wall = {k: float("inf") for k in fns}
    cpu = dict(wall)
    names = list(fns)
    for r in range(rounds):
        for k in names if r % 2 == 0 else reversed(names):
            t0, c0 = time.perf_counter(), time.thread_time()
            for _ in range(calls):
                fns[k]()
            c1, t1 = time.thread_time(), time.perf_counter()
            wall[k] = min(wall[k], (t1 - t0) / calls)
            cpu[k] = min(cpu[k], (c1 - c0) / calls)
    return {k: Best(wall[k], cpu[k]) for k in fns}


@dataclass
class Measured:
    returncode: int
    wall_s: float
    maxrss_mb: float
    stdout: str
    stderr: str


def run_measured(
    cmd: list[str], *, env: dict | None = None, cwd: Path | None = None, timeout: float | None = None
) -> Measured:
    """Run a command and return its wall time and its own peak resident
    memory (os.wait4's rusage of that one child, not of all children so far).
    Output goes through temporary files so a chatty child cannot block."""
    import tempfile
    import threading

    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, cwd=cwd)
        timer = threading.Timer(timeout, proc.kill) if timeout else None
        if timer:
            timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)  # reaps the child: Popen must not wait again
        finally:
            if timer:
                timer.cancel()
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return Measured(
            proc.returncode,
            wall,
            usage.ru_maxrss / 1024,
            out.read().decode(errors="replace"),
            err.read().decode(errors="replace"),
        )


def check(measured: Measured, what: str) -> Measured:
    """Stop the benchmark with the child's own error when it failed."""
    if measured.returncode != 0:
        tail = (measured.stderr or measured.stdout)[-3000:]
        raise SystemExit(f"{what} failed with exit code {measured.returncode}:\n{tail}")
    return measured


def child_env(**extra: str) -> dict:
    """The environment for child commands: this one with `extra` set. PATH is
    left as it is: children are started as RLRS / SNAKEMAKE, and the workflow's
    rules run the rlrs of the Python that runs Snakemake."""
    return {**os.environ, **extra}


def run_config(model: dict, threads: int, *, batch_size: int = 16, seq_len: int = 128, precision: str = "fp32") -> dict:
    """A resolved rlrs run config for timing training steps: the given model
    on the byte-level Austen corpus, a small eval set (never run while timing)
    and a step count far beyond what is timed, so the schedule never ends."""
    from rlrs.config import resolve

    return resolve(
        {
            "model": {"seq_len": seq_len, **model},
            "data": {"eval_tokens": 4096},
            "train": {
                "steps": 100000,
                "batch_size": batch_size,
                "eval_interval": 100000,
                "threads": threads,
                "precision": precision,
            },
        }
    )
