"""Train one run: the loop, its metrics, checkpoint and resume, divergence,
and the run directory (config.json, metrics.parquet, summary.json).

Resuming is exact on CPU: batches are a pure function of (seed, step), and a
checkpoint holds the model, the optimizer, the step, the RNG states and the
metrics recorded so far, so a run killed and resumed writes the same metrics
as one that never stopped.
"""

from __future__ import annotations

import math
import os
import platform
import socket
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

import rlrs
from rlrs import atomic
from rlrs.components import component_of_parameters
from rlrs.config import ConfigError, resolve, run_id
from rlrs.data import eval_batches, load_corpus, train_batch
from rlrs.executor import check_world
from rlrs.model import GPT, ModelConfig, param_counts
from rlrs.parallel import join
from rlrs.parametrization import groups as parametrization_groups
from rlrs.parametrization import role_of_parameters
from rlrs.progress import Progress
from rlrs.provenance import git_commit, utc_now
from rlrs.rundir import CHECKPOINT, CONFIG, METRICS, SUMMARY, TERMINAL
from rlrs.schedule import component_table

EXIT_OK, EXIT_FAILED, EXIT_BAD_CONFIG, EXIT_DIVERGED = 0, 1, 2, 3


# ------------------------------------------------------------------ helpers


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device", "cuda was requested but no CUDA device is available; allowed here: cpu, auto")
    return torch.device(name)


def versions() -> dict:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "rlrs": rlrs.__version__,
    }


# --------------------------------------------------------- parameter groups


def parameter_groups(model: GPT, weight_decay: float) -> tuple[list[dict], list[str], list[float]]:
    """The optimizer's parameter groups: one per component, split by weight
    role where muP's factors differ within a component (rlrs.parametrization).
    Returns the groups (params, name, the group's weight decay: weight_decay
    times its muP factor), each group's component, and each group's constant
    muP lr factor; under sp the groups are the components with factor 1.
    A group's rate at step t is its lr factor times its component's lr_g(t)."""
    by_comp = component_of_parameters(model)
    role = role_of_parameters(model)
    entries = [(c, role[id(p)]) for c, ps in by_comp.items() for p in ps]
    params = [p for ps in by_comp.values() for p in ps]
    out = parametrization_groups(model.cfg, entries)
    groups = [
        {"params": [params[i] for i in g.members], "name": g.name, "weight_decay": weight_decay * g.weight_decay_factor}
        for g in out
    ]
    return groups, [g.component for g in out], [g.lr_factor for g in out]


# ------------------------------------------------------------------ trainer


class Trainer:
    """One run's state; `run()` trains from wherever the checkpoint left off."""

    def __init__(self, cfg: dict, out_dir: Path, *, executor: str | None, job_id: str | None):
        self.cfg, self.out = cfg, Path(out_dir)
        self.run_id = run_id(cfg)
        t, o, s = cfg["train"], cfg["optim"], cfg["schedule"]
        self.steps = t["steps"]
        torch.set_num_threads(t["threads"])
        self.world, self.device = join(t["parallel"], resolve_device(t["device"]))
        # train.batch_size is the global batch, cut into micro-batches (the MoE
        # dispatch group); each process takes its contiguous share of them.
        self.micro = check_world(cfg, self.world.size)
        self.n_micro = t["batch_size"] // self.micro  # over all processes
        self.n_local = self.n_micro // self.world.size
        self.autocast = (
            torch.autocast(self.device.type, dtype=torch.bfloat16) if t["precision"] == "bf16" else nullcontext()
        )

        self.corpus = load_corpus(cfg["data"])
        self.eval_set = eval_batches(
            self.corpus, cfg["model"]["seq_len"], cfg["data"]["eval_tokens"], max(t["batch_size"], 32), self.device
        )[self.world.rank :: self.world.size]  # each process evaluates its share; the sums are reduced

        torch.manual_seed(cfg["seed"])
        self.model = GPT(ModelConfig.from_dict(cfg["model"])).to(self.device)
        groups, group_comps, lr_factors = parameter_groups(self.model, o["weight_decay"])
        self.components = list(dict.fromkeys(group_comps))
        self.optimizer = torch.optim.AdamW(
            groups,
            lr=o["lr"],
            betas=(o["beta1"], o["beta2"]),
            eps=o["eps"],
            weight_decay=o["weight_decay"],  # one decay for all groups, as the paper (times muP's factor)
            # One fused kernel per step instead of PyTorch's CPU default (a
            # Python loop of ~10 elementwise ops per tensor): 3-5x cheaper on
            # CPU (bench/trainer_overhead.py, adamw_step_ms), same update rule.
            fused=self.device.type in ("cpu", "cuda"),
        )
        # Every step's rate for every component (lr_g(t), logged as lr_<component>),
        # computed once, and for every group: its constant muP factor times lr_g(t).
        self.lr_table = component_table(s, o["lr"], self.steps, self.components)
        group_comp = [self.components.index(c) for c in group_comps]
        self.group_lr_table = self.lr_table[:, group_comp] * np.array(lr_factors)
        self.params = [p for g in groups for p in g["params"]]
        # Which component each parameter tensor belongs to, for per-component update norms.
        self.param_comp = torch.tensor([j for g, j in zip(groups, group_comp) for _ in g["params"]], device=self.device)
        # W_before lives here between copy and step: allocated once, not per step.
        self.before = [torch.empty_like(p) for p in self.params]
        # Update sizes are exact on the steps that record them, absent (null)
        # on the others: the bookkeeping is ~7 passes over all parameters.
        self.update_interval = t["update_size_interval"] or t["log_interval"]
        # The forward (and through AOTAutograd the backward) as one compiled
        # graph for training steps; evaluation and checkpoints use the eager
        # module (the same parameters), so state_dict keys stay unprefixed.
        # On more than one process the training forward/backward goes through
        # DDP (its hooks all-reduce the gradients).
        trained = self.model
        if self.world.size > 1:
            from torch.nn.parallel import DistributedDataParallel

            trained = DistributedDataParallel(self.model)
        self.ddp = None if trained is self.model else trained
        self.forward = torch.compile(trained) if t["compile"] else trained
        self.counts = param_counts(cfg["model"])
        self.meta = {
            "executor": executor,
            "job_id": job_id or os.environ.get("SLURM_JOB_ID"),
            "host": socket.gethostname(),
        }

        self.step = 0
        self.wall = 0.0  # seconds spent in earlier attempts (resume)
        self.cpu = 0.0  # this process's CPU seconds in earlier attempts (resume)
        self.train_time = 0.0
        self.train_cpu = 0.0  # CPU seconds inside train steps (all of the process's threads)
        self.started_at = utc_now()
        self.columns: dict[str, list] = {name: [] for name in self._column_names()}

    def _column_names(self) -> list[str]:
        base = ["step", "tokens", "train_loss", "lb_loss", "z_loss", "dropped_frac", "grad_norm", "eval_loss"]
        return base + [f"lr_{c}" for c in self.components] + [f"update_{c}" for c in self.components]

    # -------------------------------------------------------- checkpointing

    def save_checkpoint(self) -> None:
        if not self.world.main:  # the replicas are identical: rank 0 saves the full state
            return
        state = {
            "run_id": self.run_id,
            "step": self.step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else [],
            "columns": self.columns,
            "wall": self.wall + (time.perf_counter() - self._t0),
            "cpu": None if self.cpu is None else self.cpu + (time.process_time() - self._c0),
            "train_time": self.train_time,
            "train_cpu": self.train_cpu,
            "started_at": self.started_at,
        }
        atomic.write(self.out / CHECKPOINT, lambda p: torch.save(state, p))

    def load_checkpoint(self) -> bool:
        path = self.out / CHECKPOINT
        if not path.exists():
            return False
        state = torch.load(path, map_location=self.device, weights_only=True)
        if state["run_id"] != self.run_id:
            raise ConfigError("--out", f"{self.out} holds a checkpoint of run {state['run_id']}, not {self.run_id}")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng_cpu"].cpu())
        if state["rng_cuda"]:
            torch.cuda.set_rng_state_all([s.cpu() for s in state["rng_cuda"]])
        self.step, self.columns = state["step"], state["columns"]
        self.wall, self.train_time, self.started_at = state["wall"], state["train_time"], state["started_at"]
        # None: a checkpoint written before CPU time was recorded (its run's CPU time is unknown)
        self.cpu, self.train_cpu = state.get("cpu"), state.get("train_cpu")
        return True

    # ------------------------------------------------------------- the loop

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean cross-entropy per token over the fixed evaluation windows (the
        last batch may be smaller, so batches are weighted by their tokens)."""
        total, count = 0.0, 0
        for x, y in self.eval_set:
            with self.autocast:
                _, (_, ce), _ = self.model(x, y)
            total += ce.item() * y.numel()
            count += y.numel()
        if self.world.size > 1:
            total, count = self.world.sum_(torch.tensor([total, count], dtype=torch.float64)).tolist()
        return total / count

    def records_update(self, step: int) -> bool:
        """Whether step `step` records the update sizes (as eval steps: every
        interval-th step, counted from 1, and the last)."""
        return (step + 1) % self.update_interval == 0 or step + 1 == self.steps

    def train_step(self, step: int) -> tuple[list[float], torch.Tensor | None]:
        cfg = self.cfg
        for group, lr in zip(self.optimizer.param_groups, self.group_lr_table[step].tolist()):
            group["lr"] = lr
        # The same global batch on every process (a function of seed and step).
        x, y = train_batch(
            self.corpus, cfg["train"]["batch_size"], cfg["model"]["seq_len"], cfg["seed"], step, self.device
        )
        self.optimizer.zero_grad(set_to_none=True)
        nan = torch.tensor(float("nan"), device=self.device)
        sums = None
        for xb, yb, sync in self.world.micro_batches(x, y, self.micro, self.ddp):
            with sync:
                with self.autocast:
                    _, (loss, ce), aux = self.forward(xb, yb)
                # The step's loss is the mean over the global batch's micro-batches:
                # 1/n_local here, and DDP's mean over the processes does the rest.
                (loss if self.n_local == 1 else loss / self.n_local).backward()
            aux = [aux.get(k, nan).detach().float() for k in ("lb_loss", "z_loss", "dropped_frac")]
            micro = torch.stack([ce.detach().float(), *aux])
            sums = micro if sums is None else sums + micro
        if self.n_micro > 1:  # the mean over all micro-batches of the step
            sums = self.world.sum_(sums) / self.n_micro
        grad_norm = self._clip(cfg["optim"]["grad_clip"])

        update = None
        if self.records_update(step):
            # Relative update size per component: ||W_after - W_before|| / ||W_after||.
            before = self.before
            torch._foreach_copy_(before, self.params)
            self.optimizer.step()
            torch._foreach_sub_(before, self.params)
            n = len(self.components)
            delta_sq = torch.zeros(n, device=self.device).index_add_(
                0, self.param_comp, torch.stack(torch._foreach_norm(before)).float() ** 2
            )
            weight_sq = torch.zeros(n, device=self.device).index_add_(
                0, self.param_comp, torch.stack(torch._foreach_norm(self.params)).float() ** 2
            )
            update = delta_sq.sqrt() / weight_sq.sqrt().clamp_min(1e-30)
        else:
            self.optimizer.step()

        # Gradients (so the norm, the clipping and the update) are identical on
        # every process after DDP's all-reduce: no further reduction needed.
        scalars = torch.cat([sums, grad_norm.detach().float().reshape(1)])
        return scalars.tolist(), update

    def _clip(self, clip: float | None) -> torch.Tensor:
        """torch.nn.utils.clip_grad_norm_ without its unconditional rescale:
        the norm once, and the gradients multiplied only where the clip
        coefficient max_norm / (norm + 1e-6) is below 1 (or NaN). Where it is
        not, clip_grad_norm_ multiplies by exactly 1.0, so skipping that is
        bit-identical; where it is, the same function does the same multiply.
        Returns the total gradient norm."""
        max_norm = clip if clip is not None else math.inf  # no clip: inf, as before (an inf norm still gives NaN)
        grads = [p.grad for p in self.params if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(grads, foreach=True)
        if not bool(max_norm / (norm + 1e-6) >= 1.0):
            torch.nn.utils.clip_grads_with_norm_(self.params, max_norm, norm, foreach=True)
        return norm

    def record(self, step: int, scalars: list[float], update: torch.Tensor | None, eval_loss: float | None) -> None:
        ce, lb, z, dropped, gnorm = scalars
        if not self.cfg["model"]["moe"]:  # a dense model has no MoE losses: null, not NaN
            lb = z = dropped = None
        cfg = self.cfg
        row = {
            "step": step,
            "tokens": (step + 1) * cfg["train"]["batch_size"] * cfg["model"]["seq_len"],
            "train_loss": ce,
            "lb_loss": lb,
            "z_loss": z,
            "dropped_frac": dropped,
            "grad_norm": gnorm,
            "eval_loss": eval_loss,
        }
        updates = update.tolist() if update is not None else [None] * len(self.components)
        for c, lr, u in zip(self.components, self.lr_table[step].tolist(), updates):
            row[f"lr_{c}"] = lr
            row[f"update_{c}"] = u
        for k, v in row.items():
            self.columns[k].append(v)

    def run(self) -> dict:
        self._t0, self._c0 = time.perf_counter(), time.process_time()
        resumed = self.load_checkpoint()
        t = self.cfg["train"]
        log = Progress(self.steps, self.step, resumed, self.run_id, quiet=not self.world.main)
        status, error = "completed", None
        eval_loss = None
        while self.step < self.steps:
            step = self.step
            t_step, c_step = time.perf_counter(), time.process_time()
            scalars, update = self.train_step(step)
            self.train_time += time.perf_counter() - t_step
            if self.train_cpu is not None:
                self.train_cpu += time.process_time() - c_step
            eval_loss = None
            diverged = not math.isfinite(scalars[0])
            if not diverged and ((step + 1) % t["eval_interval"] == 0 or step + 1 == self.steps):
                eval_loss = self.evaluate()
                diverged = not math.isfinite(eval_loss)
            self.record(step, scalars, update, eval_loss)
            self.step = step + 1
            log.update(self.step, scalars[0], eval_loss)
            if diverged:
                status, error = "diverged", f"non-finite loss at step {step}"
                break
            if self.step % t["checkpoint_interval"] == 0 and self.step < self.steps:
                self.save_checkpoint()
        log.close()
        return self.finish(status, error, eval_loss)

    def finish(self, status: str, error: str | None, final_eval: float | None) -> dict:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self.world.main:
            table = pa.table(self.columns)
            atomic.write(self.out / METRICS, lambda p: pq.write_table(table, p))
        losses = [v for v in self.columns["train_loss"][-100:] if v is not None and math.isfinite(v)]
        completed = status == "completed"
        summary = {
            "run_id": self.run_id,
            "status": status,
            "final_eval_loss": final_eval if completed else None,
            "final_eval_bpb": final_eval / math.log(2) / self.corpus.bytes_per_token if completed else None,
            "train_loss_last100": float(np.mean(losses)) if completed and losses else None,
            "steps_done": self.step,
            "tokens": self.step * self.cfg["train"]["batch_size"] * self.cfg["model"]["seq_len"],
            **self.counts,
            "wall_time_s": self.wall + (time.perf_counter() - self._t0),
            "step_time_s": self.train_time / max(1, self.step),
            # CPU seconds of the writing process (rank 0), all its threads: the
            # machine's cost, which wall time overstates when cores are shared
            "cpu_time_s": None if self.cpu is None else self.cpu + (time.process_time() - self._c0),
            "step_cpu_time_s": None if self.train_cpu is None else self.train_cpu / max(1, self.step),
            "started_at": self.started_at,
            "finished_at": utc_now(),
            **self.meta,
            "versions": versions(),
            "git_commit": git_commit(),
            "corpus": self.corpus.name,
            "error": error,
        }
        if not self.world.main:
            return summary  # the same summary; rank 0 writes it
        atomic.write_json(self.out / SUMMARY, summary)
        if not self.cfg["train"]["keep_checkpoint"] or not completed:
            (self.out / CHECKPOINT).unlink(missing_ok=True)
        if self.cfg["train"]["keep_checkpoint"] and completed:
            self.save_checkpoint()
        return summary


# -------------------------------------------------------------- entry points


def train(config: dict, out_dir: Path, *, executor: str | None = None, job_id: str | None = None) -> dict:
    """Run (or resume, or skip) one run in `out_dir`; returns its summary."""
    cfg = resolve(config)
    rid = run_id(cfg)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    existing = atomic.read_json(out / CONFIG)
    if existing is not None and existing.get("run_id") != rid:
        raise ConfigError("--out", f"{out} holds run {existing.get('run_id')}, not {rid}: use another directory")
    summary = atomic.read_json(out / SUMMARY)
    if summary is not None and summary.get("status") in TERMINAL:
        print(f"[{rid}] already {summary['status']}: nothing to do", file=sys.stderr)
        return summary
    trainer = Trainer(cfg, out, executor=executor, job_id=job_id)
    if trainer.world.main:  # rank 0 writes the run directory; the other processes write nothing
        if existing is None:
            atomic.write_json(out / CONFIG, {**cfg, "run_id": rid})
        (out / SUMMARY).unlink(missing_ok=True)  # a failed attempt's summary
    try:
        return trainer.run()
    except Exception as e:
        if not trainer.world.main:
            raise
        # Record the failure (the checkpoint stays for a retry), then re-raise.
        atomic.write_json(
            out / SUMMARY,
            {
                "run_id": rid,
                "status": "failed",
                "final_eval_loss": None,
                "error": f"{type(e).__name__}: {e}",
                "steps_done": trainer.step,
                "finished_at": utc_now(),
                **trainer.meta,
            },
        )
        raise
    finally:
        trainer.world.leave()


def exit_code(summary: dict) -> int:
    return {"completed": EXIT_OK, "diverged": EXIT_DIVERGED}.get(summary.get("status"), EXIT_FAILED)
