"""Trainer overhead: steps/s of the rlrs trainer's step (schedule, clipping,
per-component update sizes, metric rows) vs a bare minimal PyTorch loop on
the identical model, batch, data, optimizer implementation and thread count,
measured side by side in one process (interleaved blocks, best of several,
so drift and load from other processes hit both).

The bare loop drives the trainer's own model, optimizer and corpus objects
(the same tensors in the same memory), so the ratio is the trainer's
bookkeeping alone: two separately built copies of one model differ by up to
~3% in speed from where their tensors happen to sit in memory, as much as
the goal itself.
What the optimizer implementation itself costs is reported per case under
`adamw_step_ms` (PyTorch's CPU default for-loop, foreach, fused), because on
CPU that choice dwarfs the bookkeeping.

Prints one JSON object on its last line: per case the two rates and
overhead = bare_steps_per_s / rlrs_steps_per_s - 1 (goal: < 0.03), and
overhead_cpu, the same ratio from the thread's CPU time (one thread only).
The rlrs step records the exact update sizes every `update_size_interval`
steps (default: the log interval, 10), as a run does; `overhead_every_step`
is the same trainer recording them on every step (interval 1), interleaved
in the same rounds. The bare loop clips with torch's clip_grad_norm_.
`--profile` adds the rlrs step's top operators (torch.profiler) on stderr.
"""

from __future__ import annotations

import argparse
import tempfile

import torch

from bench.common import emit, interleaved_best, log, run_config
from rlrs.data import train_batch
from rlrs.model import GPT, ModelConfig
from rlrs.train import Trainer

CASES = {
    "dense-d64": {"d_model": 64, "n_layers": 2, "n_heads": 4, "d_ff": 256},
    "dense-d128": {"d_model": 128, "n_layers": 2, "n_heads": 4, "d_ff": 512},
    "moe-d64": {"d_model": 64, "n_layers": 2, "n_heads": 4, "d_ff": 256, "moe": {"n_experts": 8, "top_k": 1}},
    "moe-d128": {"d_model": 128, "n_layers": 2, "n_heads": 4, "d_ff": 512, "moe": {"n_experts": 8, "top_k": 1}},
}
IMPLEMENTATIONS = {"for_loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}


def optimizer_flags(optimizer: torch.optim.Optimizer) -> dict:
    """The implementation switches an optimizer was built with."""
    return {k: optimizer.defaults[k] for k in ("fused", "foreach") if optimizer.defaults.get(k) is not None}


def bare_loop(trainer: Trainer):
    """The minimal loop on the trainer's model, optimizer and data: forward,
    backward, clip, AdamW step. Nothing scheduled, measured or recorded."""
    cfg = trainer.cfg
    model, opt, corpus = trainer.model, trainer.optimizer, trainer.corpus
    B, T, clip = cfg["train"]["batch_size"], cfg["model"]["seq_len"], cfg["optim"]["grad_clip"]
    t = 0

    def step() -> None:
        nonlocal t
        x, y = train_batch(corpus, B, T, cfg["seed"], t)
        _, (loss, _), _ = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        loss.item()
        t += 1

    return step


def rlrs_loop(trainer: Trainer, update_interval: int):
    """The trainer's step and metric row, recording update sizes every
    `update_interval` steps (the run's default: its log_interval)."""
    t = 0

    def step() -> None:
        nonlocal t
        trainer.update_interval = update_interval  # the loops share one trainer
        scalars, update = trainer.train_step(t)
        trainer.record(t, scalars, update, None)
        t += 1

    return step


def adamw_step_ms(cfg: dict, rounds: int) -> dict:
    """One AdamW step on the case's parameters, per implementation (ms)."""
    torch.manual_seed(0)
    model = GPT(ModelConfig.from_dict(cfg["model"]))
    steps = {}
    for name, flags in IMPLEMENTATIONS.items():
        params = [p.detach().clone().requires_grad_() for p in model.parameters()]
        for p in params:
            p.grad = torch.randn_like(p) * 1e-3
        steps[name] = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.1, **flags).step
    best = interleaved_best(steps, rounds, 5)
    return {k: round(v.wall * 1e3, 3) for k, v in best.items()}


def profile_step(step, n: int = 10) -> None:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(n):
            step()
    log(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))


def measure(name: str, model: dict, threads: int, steps: int, rounds: int, profile: bool) -> dict:
    cfg = run_config(model, threads)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, tmp, executor=None, job_id=None)  # sets torch's thread count
        flags = optimizer_flags(trainer.optimizer)
        interval = trainer.update_interval
        loops = {
            "bare": bare_loop(trainer),
            "rlrs": rlrs_loop(trainer, interval),
            "rlrs_every_step": rlrs_loop(trainer, 1),
        }
        best = interleaved_best(loops, rounds, steps)
        if profile:
            log(f"--- {name}: rlrs step")
            profile_step(loops["rlrs"])
    bare, ours = 1 / best["bare"].wall, 1 / best["rlrs"].wall
    result = {
        "case": name,
        "threads": threads,
        "optimizer": flags or "default",
        "bare_steps_per_s": round(bare, 3),
        "rlrs_steps_per_s": round(ours, 3),
        "update_size_interval": interval,
        "overhead": round(bare / ours - 1, 4),
        # the same from the thread's CPU time: robust to load from other
        # processes, and the whole cost with one thread (None with more)
        "overhead_cpu": round(best["rlrs"].cpu / best["bare"].cpu - 1, 4) if threads == 1 else None,
        # the same trainer recording exact update sizes on every step (update_size_interval: 1)
        "overhead_every_step": round(best["rlrs_every_step"].wall / best["bare"].wall - 1, 4),
        "overhead_every_step_cpu": round(best["rlrs_every_step"].cpu / best["bare"].cpu - 1, 4)
        if threads == 1
        else None,
        "adamw_step_ms": adamw_step_ms(cfg, max(2, rounds // 2)),
    }
    log(result)
    return result


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=30, help="steps per timed block")
    p.add_argument("--rounds", type=int, default=6, help="timed blocks per loop (best one counts)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    p.add_argument("--profile", action="store_true", help="print the rlrs step's top operators on stderr")
    p.add_argument("--quick", action="store_true", help="smoke pass: one small case, a few steps")
    a = p.parse_args(argv)
    if a.quick:
        a.steps, a.rounds, a.cases = 2, 2, ["moe-d64"]
    results = [measure(name, CASES[name], a.threads, a.steps, a.rounds, a.profile) for name in a.cases]
    return emit(
        "trainer_overhead",
        "overhead < 0.03",
        {
            "max_overhead": max(r["overhead"] for r in results),
            "max_overhead_cpu": max(
                (r["overhead_cpu"] for r in results if r["overhead_cpu"] is not None), default=None
            ),
        },
        results=results,
    )


if __name__ == "__main__":
    main()
