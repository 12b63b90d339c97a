"""Executor settings of a study (`executor:` block): which submitit executor
runs the jobs, with what limits and how many processes per run (and whether
a run config fits that job shape). The kind is always a setting, never
guessed. Building the executors themselves is rlrs.launch's (submitit)."""

from __future__ import annotations

import copy

from rlrs.errors import ConfigError

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


def check_world(cfg: dict, world: int) -> int:
    """Refuse a resolved config that `world` processes cannot train; returns
    the micro-batch size. `train.batch_size` is the global batch: every
    process takes an equal slice of whole micro-batches."""
    train = cfg["train"]
    batch, micro = train["batch_size"], train["micro_batch_size"]
    if world > 1 and train["parallel"] == "none":
        raise ConfigError(
            "train.parallel",
            f"none trains one process, but the job has {world} (executor.tasks_per_node x nodes); set ddp",
        )
    if batch % world:
        raise ConfigError("train.batch_size", f"{batch} is not divisible by the job's {world} processes")
    if micro is None:
        if world > 1 and cfg["model"]["moe"]:
            raise ConfigError(
                "train.micro_batch_size",
                f"an MoE run on {world} processes must set it (it is the dispatch group of capacity and aux losses; "
                f"null means the whole batch of {batch}); allowed: a divisor of {batch // world}",
            )
        return batch // world
    if batch % (world * micro):
        raise ConfigError(
            "train.micro_batch_size",
            f"train.batch_size={batch} is not divisible by {world} processes x micro_batch_size={micro}",
        )
    return micro
