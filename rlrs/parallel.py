"""Data parallelism: the job's processes, found through submitit's
distributed environment, and the reductions a step needs.

A submitit job with `tasks_per_node x nodes` tasks runs the same trainer in
every task. `join()` reads rank, world size and the master address from
submitit (`submitit.helpers.TorchDistributedEnvironment`: SLURM_* on Slurm,
SUBMITIT_LOCAL_* under the local executor) and starts the process group:
NCCL on CUDA, gloo on CPU. Outside a multi-task job it returns the world of
one process and starts nothing, so single-process training runs exactly the
code it always did.
"""

from __future__ import annotations

import datetime as dt
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist

from rlrs.errors import ConfigError

# How long a process waits for the others at a collective before failing
# (a crashed peer otherwise holds the rest for torch's default 30 min).
TIMEOUT = dt.timedelta(minutes=10)


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes the run directory."""
        return self.rank == 0

    def sum_(self, t: torch.Tensor) -> torch.Tensor:
        """All-reduce (sum) in place across the processes; a no-op for one."""
        if self.size > 1:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def micro_batches(self, x: torch.Tensor, y: torch.Tensor, micro: int, ddp=None):
        """This process's share of a global batch: its contiguous run of whole
        micro-batches (rank r of W takes micro-batches r*n .. (r+1)*n - 1 of
        the W*n), each with the context its backward runs in: DDP's no_sync()
        but on the last, so the gradients are all-reduced once per step."""
        n = x.shape[0] // micro // self.size
        for j in range(n):
            lo = (self.rank * n + j) * micro
            sync = ddp.no_sync() if ddp is not None and j < n - 1 else nullcontext()
            yield x[lo : lo + micro], y[lo : lo + micro], sync

    def leave(self) -> None:
        if self.size > 1 and dist.is_initialized():
            dist.destroy_process_group()


def job_tasks() -> int:
    """Tasks of the submitit job this process runs in (1 outside a job)."""
    import submitit

    try:
        return submitit.JobEnvironment().num_tasks
    except RuntimeError:  # not in a submitit job (`rlrs train`, the debug executor)
        return 1


def join(parallel: str, device: torch.device) -> tuple[World, torch.device]:
    """This process's place in the job, and its device (cuda:local_rank on GPUs)."""
    tasks = job_tasks()
    if tasks == 1:
        return World(), device
    if parallel != "ddp":
        raise ConfigError("train.parallel", f"{parallel} trains one process, but the job has {tasks}; set ddp")
    from submitit.helpers import TorchDistributedEnvironment

    env = TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    if device.type == "cuda":
        device = torch.device("cuda", env.local_rank)
        torch.cuda.set_device(device)
    dist.init_process_group(
        "nccl" if device.type == "cuda" else "gloo",
        init_method="env://",
        rank=env.rank,
        world_size=env.world_size,
        timeout=TIMEOUT,
    )
    return World(env.rank, env.world_size, env.local_rank), device
