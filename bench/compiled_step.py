"""Compiled training step (`train.compile: true`) vs eager: the steady-state
step time of rlrs.train.Trainer.train_step, both measured side by side in one
process (interleaved, best of rounds), the compile time, and the run length
at which compiling pays for itself.

Cases: d_model 128 and 256 (2 layers, 4 heads, d_ff 4d, seq 128, batch 16),
fp32 and bf16 autocast, dense and MoE (8 experts, top-1).

compile_s: the first two compiled steps (tracing, AOTAutograd, Inductor's
C++ code generation and build, for forward and backward) minus two steady
compiled steps; Inductor's on-disk caches point at a fresh directory, so
this is the cold cost a run pays in a new process on a new machine (a warm
cache, e.g. the next run of the same shapes on the same machine, pays less).
break_even_steps = compile_s / (eager step - compiled step): runs longer
than that finish sooner compiled (None where compiled is not faster).

Prints ONE JSON object on its last line; goal (info): compiled / eager < 1.
"""

from __future__ import annotations

import os
import tempfile

# Before torch is imported: a cold, private Inductor cache for this process.
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="rlrs-bench-inductor-"))

import argparse  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from bench.common import emit, interleaved_best, log, run_config  # noqa: E402
from rlrs.train import Trainer  # noqa: E402

WIDTHS = (128, 256)
PRECISIONS = ("fp32", "bf16")
FAMILIES = ("dense", "moe")


def model(d: int, family: str) -> dict:
    dense = {"d_model": d, "n_layers": 2, "n_heads": 4, "d_ff": 4 * d}
    return {**dense, "moe": {"n_experts": 8, "top_k": 1}} if family == "moe" else dense


def stepper(trainer: Trainer):
    it = iter(range(10**9))
    return lambda: trainer.train_step(next(it))


def measure(d: int, precision: str, family: str, steps: int, rounds: int) -> dict:
    import torch._dynamo

    torch._dynamo.reset()  # each case compiles from scratch
    cfg = run_config(model(d, family), 1, precision=precision)
    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
        eager = Trainer(cfg, Path(a), executor=None, job_id=None)
        compiled = Trainer({**cfg, "train": {**cfg["train"], "compile": True}}, Path(b), executor=None, job_id=None)
        step_e, step_c = stepper(eager), stepper(compiled)
        t0 = time.perf_counter()
        step_c()
        step_c()
        first_two = time.perf_counter() - t0
        best = interleaved_best({"eager": step_e, "compiled": step_c}, rounds, steps)
    e, c = best["eager"].wall, best["compiled"].wall
    compile_s = first_two - 2 * c
    result = {
        "case": f"{family}-d{d}-{precision}",
        "eager_step_ms": round(e * 1e3, 3),
        "compiled_step_ms": round(c * 1e3, 3),
        "compiled_over_eager": round(c / e, 3),
        "compiled_over_eager_cpu": round(best["compiled"].cpu / best["eager"].cpu, 3),
        "compile_s": round(compile_s, 1),
        "break_even_steps": round(compile_s / (e - c)) if c < e else None,
    }
    log(result)
    return result


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--widths", nargs="+", type=int, default=list(WIDTHS))
    p.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=PRECISIONS)
    p.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    p.add_argument("--steps", type=int, default=5, help="steps per timed block")
    p.add_argument("--rounds", type=int, default=4, help="timed blocks per side (best one counts)")
    p.add_argument("--quick", action="store_true", help="smoke pass: dense d 32 fp32, two short rounds")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    if a.quick:
        a.widths, a.precisions, a.families, a.steps, a.rounds = [32], ["fp32"], ["dense"], 2, 2
    results = [measure(d, pr, f, a.steps, a.rounds) for d in a.widths for pr in a.precisions for f in a.families]
    return emit(
        "compiled_step",
        "compiled / eager step < 1 (info); break-even run length",
        {"compiled_over_eager": {r["case"]: r["compiled_over_eager"] for r in results}},
        results=results,
        inductor_cache=os.environ["TORCHINDUCTOR_CACHE_DIR"],
    )


if __name__ == "__main__":
    main()
