"""MoE dispatch: the step time of a mixture-of-experts model divided by that
of a dense model with the same ACTIVE parameters (8 experts of width d_ff,
top-1 == a dense SwiGLU of width d_ff; granularity G: 8G experts of width
d_ff/G, top-G, the same active compute).

Two ratios per case, each measured side by side in one process:
- `step_ratio`: rlrs.train.Trainer.train_step, MoE vs dense (the whole step:
  attention, head and the optimizer over all parameters included);
- `layer_ratio`: the feed-forward layer alone, forward + backward on the same
  input (rlrs.model.MoE vs rlrs.model.SwiGLU): the dispatch's own cost.

Both also from the thread's CPU time (`*_cpu`, one thread only), which
leaves out waiting for a core: the robust figure on a shared machine.

Prints one JSON object on its last line; goal: step_ratio <= 1.3.
`--profile` prints the MoE layer's top operators on stderr.
"""

from __future__ import annotations

import argparse
import tempfile

import torch

from bench.common import emit, interleaved_best, log, run_config
from rlrs.model import ModelConfig, MoE, SwiGLU
from rlrs.train import Trainer

# (d_model, granularity)
CASES = {"d128-g1": (128, 1), "d128-g2": (128, 2), "d128-g4": (128, 4), "d256-g1": (256, 1)}


def models(d: int, granularity: int) -> tuple[dict, dict]:
    dense = {"d_model": d, "n_layers": 2, "n_heads": 4, "d_ff": 4 * d}
    return {**dense, "moe": {"n_experts": 8, "top_k": 1, "granularity": granularity}}, dense


def layer_step(layer: torch.nn.Module, x: torch.Tensor):
    """Forward + backward of one feed-forward layer, aux losses included."""

    def step() -> None:
        y, aux = layer(x)
        loss = y.square().mean() + sum(aux.get(k, 0.0) for k in ("lb_loss", "z_loss"))
        layer.zero_grad(set_to_none=True)
        x.grad = None
        loss.backward()

    return step


def trainer_step(trainer: Trainer, last: dict):
    """One training step; keeps the step's scalars (dropped_frac is [3])."""
    t = iter(range(10**9))

    def step() -> None:
        last["scalars"], _ = trainer.train_step(next(t))

    return step


def measure(name: str, threads: int, steps: int, rounds: int, profile: bool) -> dict:
    d, g = CASES[name]
    moe_model, dense_model = models(d, g)
    moe_cfg, dense_cfg = run_config(moe_model, threads), run_config(dense_model, threads)
    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
        moe_tr = Trainer(moe_cfg, a, executor=None, job_id=None)
        dense_tr = Trainer(dense_cfg, b, executor=None, job_id=None)
        last: dict = {}
        step = interleaved_best({"moe": trainer_step(moe_tr, last), "dense": trainer_step(dense_tr, {})}, rounds, steps)
        dropped = last["scalars"][3]
    torch.manual_seed(0)
    moe_layer, dense_layer = MoE(ModelConfig.from_dict(moe_model)), SwiGLU(ModelConfig.from_dict(dense_model))
    x = torch.randn(moe_cfg["train"]["batch_size"], moe_cfg["model"]["seq_len"], d, requires_grad=True)
    layer = interleaved_best({"moe": layer_step(moe_layer, x), "dense": layer_step(dense_layer, x)}, rounds, 3 * steps)
    if profile:
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as prof_ctx

        with prof_ctx(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            for _ in range(5):
                layer_step(moe_layer, x)()
        log(f"--- {name}: MoE layer forward + backward")
        log(prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=20))
    result = {
        "case": name,
        "d_model": d,
        "granularity": g,
        "threads": threads,
        "moe_step_s": round(step["moe"].wall, 4),
        "dense_step_s": round(step["dense"].wall, 4),
        "step_ratio": round(step["moe"].wall / step["dense"].wall, 3),
        "moe_layer_ms": round(layer["moe"].wall * 1e3, 3),
        "dense_layer_ms": round(layer["dense"].wall * 1e3, 3),
        "layer_ratio": round(layer["moe"].wall / layer["dense"].wall, 3),
        # the same ratios from the thread's CPU time (robust to other load; one thread only)
        "step_ratio_cpu": round(step["moe"].cpu / step["dense"].cpu, 3) if threads == 1 else None,
        "layer_ratio_cpu": round(layer["moe"].cpu / layer["dense"].cpu, 3) if threads == 1 else None,
        "dropped_frac_last_step": round(dropped, 4),
    }
    log(result)
    return result


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=5, help="steps per timed block")
    p.add_argument("--rounds", type=int, default=6, help="timed blocks per side (best one counts)")
    p.add_argument("--profile", action="store_true")
    p.add_argument("--quick", action="store_true", help="smoke pass: one case, two short rounds")
    a = p.parse_args(argv)
    if a.quick:
        a.cases, a.steps, a.rounds = ["d128-g2"], 1, 2
    results = [measure(name, a.threads, a.steps, a.rounds, a.profile) for name in a.cases]
    return emit(
        "moe_dispatch",
        "step_ratio <= 1.3",
        {
            "max_step_ratio": max(r["step_ratio"] for r in results),
            "max_layer_ratio": max(r["layer_ratio"] for r in results),
        },
        results=results,
    )


if __name__ == "__main__":
    main()
