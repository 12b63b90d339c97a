"""Executor settings of a study (`executor:` block): which submitit executor
runs the jobs and with what limits. The kind is always a setting, never
guessed. Building the executors themselves is rlrs.launch's (submitit)."""

from __future__ import annotations

import copy

KINDS = ("local", "slurm", "debug")
DEFAULTS = {"kind": "local", "timeout_min": 60, "runs_per_job": 1, "tasks_per_node": 1, "nodes": 1}


def executor_settings(study: dict) -> dict:
    """The study's executor block with defaults filled (local, 60 min, one run per job)."""
    return {**copy.deepcopy(DEFAULTS), **copy.deepcopy(study.get("executor") or {})}


def world_size(settings: dict) -> int:
    """Processes of one job: executor.tasks_per_node x executor.nodes (one per GPU on Slurm)."""
    return int(settings.get("tasks_per_node", 1)) * int(settings.get("nodes", 1))


def slurm_parameters(settings: dict) -> dict:
    """The study's executor block -> SlurmExecutor parameters (sbatch options)."""
    slurm = dict(settings.get("slurm") or {})
    params = {
        "time": int(settings["timeout_min"]),
        "ntasks_per_node": int(settings.get("tasks_per_node", 1)),
        "nodes": int(settings.get("nodes", 1)),
    }
    if "mem_gb" in slurm:
        params["mem"] = f"{slurm.pop('mem_gb')}GB"
    params.update(slurm)  # partition, gpus_per_node, cpus_per_task, account, qos, constraint, setup, array_parallelism
    return params
