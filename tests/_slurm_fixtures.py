"""A real single-node Slurm for tests, and helpers to ask it about jobs.

`slurm_cluster` (session scope) runs `scripts/slurm-single-node.sh up` once,
yields a `SlurmCluster`, and runs `down` when the session ends. `down` purges
Slurm from the machine again: while `srun` is on PATH, submitit's AutoExecutor
sends every process's jobs to Slurm, so a machine must never be left with it.
The same `down` also runs from `atexit` and from SIGTERM/SIGHUP handlers, so an
interrupted session still cleans up (only SIGKILL cannot be caught).

Use it from a test module with

    pytest_plugins = ["_slurm_fixtures"]

(a plugin, not an import of the fixture: one cluster per session however many
modules use it; pytest's default import mode puts tests/ on sys.path).

Without root or apt-get the tests are skipped with the reason, except under CI
(`CI` set), where a missing Slurm is a failure: CI must really run them.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "slurm-single-node.sh"
PARTITION = "debug"
CLUSTER = "ci"
# apt-get may wait for another process's dpkg lock; `up` itself takes ~10-20 s.
UP_TIMEOUT_S = 900
DOWN_TIMEOUT_S = 600
# sacct states after which a job record no longer changes.
TERMINAL_STATES = {
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "OUT_OF_MEMORY",
    "NODE_FAIL",
    "PREEMPTED",
    "BOOT_FAIL",
    "DEADLINE",
}


@dataclass(frozen=True)
class SlurmCluster:
    partition: str
    cluster: str
    up_seconds: float


def _start_script(action: str) -> subprocess.Popen:
    env = {**os.environ, "RLRS_SLURM_PARTITION": PARTITION}
    return subprocess.Popen(
        ["bash", str(SCRIPT), action], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _run_script(action: str, timeout: float) -> subprocess.CompletedProcess:
    proc = _start_script(action)
    try:
        out, err = proc.communicate(timeout=timeout)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


class _Teardown:
    """Runs `down` exactly once, from whichever of finalizer, atexit or signal comes first."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._done = False
        self._previous: dict[int, object] = {}
        self.up_process: subprocess.Popen | None = None

    def install(self) -> None:
        atexit.register(self.run)
        for sig in (signal.SIGTERM, signal.SIGHUP):
            self._previous[sig] = signal.signal(sig, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        self.run()
        previous = self._previous.get(signum)
        if callable(previous):
            previous(signum, frame)
        else:  # default action: die of the same signal, as the sender expects
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    def run(self) -> subprocess.CompletedProcess | None:
        with self._lock:
            if self._done:
                return None
            self._done = True
        if self.up_process is not None and self.up_process.poll() is None:
            # Interrupted during `up`: stop the script, but not an apt-get it
            # started (a killed dpkg leaves a broken package database); `down`
            # waits for apt's lock and then purges what was installed.
            self.up_process.terminate()
            self.up_process.wait()
        result = _run_script("down", DOWN_TIMEOUT_S)
        # Visible in the test log, with the script's own timings.
        sys.stderr.write(result.stderr)
        atexit.unregister(self.run)
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        return result


def _why_slurm_cannot_run() -> str | None:
    if os.geteuid() != 0:
        return "needs root to install and start Slurm"
    if shutil.which("apt-get") is None:
        return "needs apt-get (Debian packages of Slurm)"
    return None


@pytest.fixture(scope="session")
def slurm_cluster():
    """A running single-node Slurm (partition `debug`), purged again when the session ends."""
    reason = _why_slurm_cannot_run()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"a real Slurm is required in CI but cannot start here: {reason}")
        pytest.skip(reason)

    teardown = _Teardown()
    teardown.install()  # before `up`: a half-done install is purged as well
    started = time.monotonic()
    teardown.up_process = _start_script("up")
    try:
        out, err = teardown.up_process.communicate(timeout=UP_TIMEOUT_S)
    except BaseException:  # timeout, KeyboardInterrupt
        teardown.run()
        raise
    up_seconds = time.monotonic() - started
    sys.stderr.write(err)
    if teardown.up_process.returncode != 0:
        teardown.run()
        pytest.fail(f"slurm-single-node.sh up failed (exit {teardown.up_process.returncode}):\n{out}\n{err}")

    yield SlurmCluster(partition=PARTITION, cluster=CLUSTER, up_seconds=up_seconds)

    down = teardown.run()
    if down is not None:
        assert down.returncode == 0, f"slurm-single-node.sh down failed:\n{down.stdout}\n{down.stderr}"
        assert shutil.which("srun") is None, "srun is still on PATH after down"


def sacct_records(job_ids: list[str], *, duplicates: bool = False, timeout_s: float = 60) -> list[dict[str, str]]:
    """The accounting records of these jobs (`12`, or array tasks `12_0`), once settled.

    slurmctld sends records to slurmdbd asynchronously and in pieces: for a
    moment an array shows as one pending `12`, and a finished job may still
    lack its partition. So this polls `sacct` until every asked-for id has a
    record, each in a final state with its partition filled in.
    `duplicates=True` also returns the records of earlier attempts of a
    requeued job (state `REQUEUED`), oldest first.
    """
    fields = ["JobID", "State", "Partition", "Cluster", "ExitCode"]
    cmd = ["sacct", "-n", "-X", "-P", "-j", ",".join(job_ids), "-o", ",".join(fields)]
    cmd += ["-D"] if duplicates else []
    deadline = time.monotonic() + timeout_s
    while True:
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=30).stdout
        records = [dict(zip(fields, line.split("|"))) for line in out.splitlines() if line.strip()]
        latest = {r["JobID"]: r for r in records}  # sacct lists attempts oldest first
        settled = (
            set(latest) == set(job_ids)
            # "CANCELLED by 0" carries the canceller's uid: compare the first word.
            and all(r["State"].split()[0] in TERMINAL_STATES for r in latest.values())
            and all(r["Partition"] for r in records)
        )
        if settled:
            return records
        if time.monotonic() > deadline:
            raise AssertionError(f"sacct had no settled record of jobs {job_ids} after {timeout_s}s: {records}")
        time.sleep(0.5)
