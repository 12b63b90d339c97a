"""submitit through a real single-node Slurm: a job, a failure, an array, and a
checkpointable job that times out, is requeued and resumes from its checkpoint.

The executor is always `submitit.SlurmExecutor`, never AutoExecutor. Jobs run
in fresh Python processes started by Slurm, which cannot import this test
module; cloudpickle therefore ships its functions by value.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import cloudpickle
import pytest
import submitit
from submitit.core.utils import FailedJobError

pytest.register_assert_rewrite("_slurm_fixtures")  # before its import: its asserts report values
from _slurm_fixtures import SCRIPT, sacct_records  # noqa: E402

# The `slurm_cluster` fixture, registered as a plugin: one cluster per session
# however many test modules use it.
pytest_plugins = ["_slurm_fixtures"]

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _slurm_view(x: int) -> dict:
    """What a job sees of Slurm, and a value computed from its argument."""
    return {
        "square": x * x,
        "job_id": os.environ["SLURM_JOB_ID"],
        "partition": os.environ["SLURM_JOB_PARTITION"],
        "array_job_id": os.environ.get("SLURM_ARRAY_JOB_ID"),
        "array_task_id": os.environ.get("SLURM_ARRAY_TASK_ID"),
    }


def _fail(x: int) -> None:
    raise ValueError(f"bad input {x}")


class _CountSeconds(submitit.helpers.Checkpointable):
    """Counts seconds toward a target far beyond the job's 1-minute limit.

    On the timeout signal submitit calls `checkpoint()`, which records the count
    reached and leaves three more seconds of work; Slurm requeues the job, and
    the new attempt loads this object as pickled at the checkpoint and finishes.
    Only a resumed state can finish: the original target is an hour away.
    """

    def __init__(self) -> None:
        self.count = 0
        self.target = 3600
        self.attempts = 0
        self.checkpointed_at: list[int] = []

    def __call__(self) -> dict:
        self.attempts += 1
        while self.count < self.target:
            time.sleep(1)
            self.count += 1
        return {
            "count": self.count,
            "attempts": self.attempts,
            "checkpointed_at": self.checkpointed_at,
            "job_id": os.environ["SLURM_JOB_ID"],
            "restart_count": os.environ.get("SLURM_RESTART_COUNT"),
        }

    def checkpoint(self) -> submitit.helpers.DelayedSubmission:
        self.checkpointed_at.append(self.count)
        self.target = self.count + 3
        # Next, submitit runs `scontrol requeue` as a child process. The requeue
        # makes slurmd SIGTERM every process of the job, and a child with the
        # default SIGTERM action may die before it exits 0, failing the requeue
        # (seen here once in about a dozen requeues: "scontrol requeue ... died
        # with SIGTERM").
        # An ignored signal is inherited across exec; SIGKILL after KillWait
        # still ends the job.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        return super().checkpoint()


def _executor(folder, cluster, **params) -> submitit.SlurmExecutor:
    executor = submitit.SlurmExecutor(folder=folder)
    executor.update_parameters(partition=cluster.partition, time=1, cpus_per_task=1, **params)
    return executor


def _script(action: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(SCRIPT), action], env={**os.environ, **env}, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    ("action", "env", "message"),
    [
        ("start", {}, "got 'start'; allowed actions: up, down, status"),
        ("up", {"RLRS_SLURM_CPUS": "0"}, "RLRS_SLURM_CPUS=0: allowed is a positive integer"),
        ("up", {"RLRS_SLURM_PARTITION": "de bug"}, "RLRS_SLURM_PARTITION=de bug: allowed are letters"),
        ("up", {"RLRS_SLURM_READY_TIMEOUT": "soon"}, "RLRS_SLURM_READY_TIMEOUT=soon: allowed is a positive"),
    ],
)
def test_script_refuses_bad_input_before_any_work(action, env, message):
    out = _script(action, **env)
    assert out.returncode == 2
    assert message in out.stderr
    assert "[slurm-single-node]" not in out.stderr  # no phase began


def test_up_again_finds_everything_running(slurm_cluster):
    again = _script("up")
    assert again.returncode == 0, again.stderr
    assert "packages already installed" in again.stderr
    for daemon in ("mariadb", "munged", "slurmdbd", "slurmctld", "slurmd"):
        assert f"{daemon} already running" in again.stderr
    status = _script("status")
    assert status.returncode == 0, status.stdout
    assert f"partition {slurm_cluster.partition}*: up, 1 node(s)" in status.stdout


def test_job_runs_on_slurm_and_is_accounted(slurm_cluster, tmp_path):
    job = _executor(tmp_path, slurm_cluster).submit(_slurm_view, 7)

    assert job.job_id.isdigit()
    assert job.result() == {
        "square": 49,
        "job_id": job.job_id,
        "partition": "debug",
        "array_job_id": None,
        "array_task_id": None,
    }
    assert sacct_records([job.job_id]) == [
        {"JobID": job.job_id, "State": "COMPLETED", "Partition": "debug", "Cluster": "ci", "ExitCode": "0:0"}
    ]


def test_failing_job_raises_its_error_and_is_accounted_as_failed(slurm_cluster, tmp_path):
    job = _executor(tmp_path, slurm_cluster).submit(_fail, 3)

    with pytest.raises(FailedJobError, match="ValueError: bad input 3"):
        job.result()
    [record] = sacct_records([job.job_id])
    assert (record["JobID"], record["State"], record["ExitCode"]) == (job.job_id, "FAILED", "1:0")


def test_job_array_runs_each_task(slurm_cluster, tmp_path):
    jobs = _executor(tmp_path, slurm_cluster).map_array(_slurm_view, [1, 2, 3])

    array_id = jobs[0].job_id.split("_")[0]
    assert [job.job_id for job in jobs] == [f"{array_id}_0", f"{array_id}_1", f"{array_id}_2"]
    results = [job.result() for job in jobs]
    assert [r["square"] for r in results] == [1, 4, 9]
    assert [(r["array_job_id"], r["array_task_id"]) for r in results] == [
        (array_id, "0"),
        (array_id, "1"),
        (array_id, "2"),
    ]
    assert {r["partition"] for r in results} == {"debug"}
    records = sacct_records([job.job_id for job in jobs])
    assert [(r["JobID"], r["State"]) for r in records] == [
        (f"{array_id}_0", "COMPLETED"),
        (f"{array_id}_1", "COMPLETED"),
        (f"{array_id}_2", "COMPLETED"),
    ]


def test_checkpointable_job_is_requeued_on_timeout_and_resumes(slurm_cluster, tmp_path):
    # slurmctld checks time limits every 30 s and sends the `--signal` once
    # less than (signal delay + 30 s) is left: with a 1-minute limit and a
    # 10 s delay, SIGUSR2 comes 20-50 s into the job (never at its start, so the
    # first attempt always makes progress; always before the limit's kill at
    # 60 s). The requeued attempt starts ~15 s later (cred_expire=10): ~40-70 s.
    job = _executor(tmp_path, slurm_cluster, signal_delay_s=10).submit(_CountSeconds())

    result = job.result()

    [reached] = result["checkpointed_at"]
    assert reached >= 15, "the first attempt runs ~20 s or more before the timeout signal"
    assert result == {
        "count": reached + 3,
        "attempts": 2,
        "checkpointed_at": [reached],
        "job_id": job.job_id,
        "restart_count": "1",
    }
    records = sacct_records([job.job_id], duplicates=True)
    assert [(r["JobID"], r["State"]) for r in records] == [(job.job_id, "REQUEUED"), (job.job_id, "COMPLETED")]
