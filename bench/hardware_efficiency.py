"""Hardware efficiency: the model FLOP/s a real rlrs training step achieves
divided by the peak matmul FLOP/s torch reaches on this machine, both
measured in this process with the same thread count.

- Achieved: rlrs.model.train_flops_per_token(cfg) (forward + backward of the
  active matmul weights, head included, plus attention's score/value
  products) x tokens per step / the step time of rlrs.train.Trainer.train_step
  (the whole step: data, forward, backward, clipping, AdamW, update sizes).
- Peak: the best of several large square torch.mm calls in the step's
  matmul dtype (fp32; bf16 for `--precisions bf16`, which runs the step
  under bf16 autocast, the config's `train.precision: bf16`: on CPUs with
  AMX the bf16 peak is several times the fp32 one).
- Where the rest goes: one profiled step per case (torch.profiler, self CPU
  time by operator class), and the matmul operators' own FLOP/s (the
  profiler's FLOP counts for mm/bmm/addmm), which says whether the matmuls
  are slow (small shapes) or the time goes elsewhere.

Prints one JSON object on its last line: per case the efficiency, and
`min_efficiency_d256_up` over the fp32 cases (goal: >= 0.5).
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from bench.common import emit, interleaved_best, log, run_config
from rlrs.model import train_flops_per_token
from rlrs.train import Trainer

WIDTHS = (128, 256, 512)
ARCHS = {"dense": None, "moe": {"n_experts": 8, "top_k": 1}}
# Operator -> class, for the time breakdown (first matching substring wins).
CLASSES = (
    ("matmul", ("aten::mm", "aten::bmm", "aten::addmm", "aten::baddbmm")),
    ("attention", ("scaled_dot_product", "flash_attention")),
    ("optimizer", ("_fused_adamw", "adamw")),
    ("clip + update sizes", ("_foreach_", "vector_norm", "aten::norm")),
    ("softmax/cross-entropy", ("softmax", "nll_loss", "cross_entropy", "logsumexp")),
    ("layernorm", ("layer_norm",)),
    ("indexing (embedding, MoE dispatch)", ("index", "scatter", "gather", "topk", "sort", "bincount", "cumsum")),
    (
        "elementwise",
        (
            "aten::mul",
            "aten::add",
            "aten::sub",
            "aten::div",
            "silu",
            "aten::copy_",
            "aten::fill_",
            "aten::pow",
            "aten::sqrt",
            "aten::clamp",
            "aten::zero_",
            "aten::to",
            "aten::_to_copy",
        ),
    ),
)


def model_config(arch: str, d: int) -> dict:
    """A 2-layer decoder with head width 64 (at least 4 heads) and 4x FFN."""
    model = {"d_model": d, "n_layers": 2, "n_heads": max(4, d // 64), "d_ff": 4 * d}
    if ARCHS[arch]:
        model["moe"] = ARCHS[arch]
    return model


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def peak_flops(threads: int, n: int, repeats: int, precision: str = "fp32") -> float:
    """Best FLOP/s of an n x n x n torch.mm in this precision and thread count."""
    torch.set_num_threads(threads)
    dtype = DTYPES[precision]
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    out = torch.empty(n, n, dtype=dtype)
    best = interleaved_best({"mm": lambda: torch.mm(a, b, out=out)}, repeats, 2)["mm"].wall
    return 2.0 * n**3 / best


def classify(name: str) -> str:
    low = name.lower()
    for cls, keys in CLASSES:
        if any(k in low for k in keys):
            return cls
    return "other"


def breakdown(step, peak: float) -> dict:
    """One profiled step: share of self CPU time per operator class, and the
    FLOP/s of the matmul operators alone (relative to the peak)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], with_flops=True) as prof:
        step()
    shares: dict[str, float] = {}
    mm_flops = mm_time = 0.0
    # Only leaf work counts: self time, so a parent op's time is not counted twice.
    for ev in prof.key_averages():
        cls = classify(ev.key)
        shares[cls] = shares.get(cls, 0.0) + ev.self_cpu_time_total
        if cls == "matmul":
            mm_flops += ev.flops or 0
            mm_time += ev.self_cpu_time_total
    total = sum(shares.values()) or 1.0
    return {
        "time_share": {k: round(v / total, 3) for k, v in sorted(shares.items(), key=lambda kv: -kv[1])},
        "matmul_ops_efficiency": round(mm_flops / (mm_time * 1e-6) / peak, 3) if mm_time else None,
    }


def measure(
    arch: str, d: int, threads: int, precision: str, peak: float, steps: int, rounds: int, profile: bool
) -> dict:
    cfg = run_config(model_config(arch, d), threads, precision=precision)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, tmp, executor=None, job_id=None)  # sets the thread count
        t = iter(range(10**9))
        step = lambda: trainer.train_step(next(t))
        step_s = interleaved_best({"step": step}, rounds, steps)["step"].wall
        extra = breakdown(step, peak) if profile else {}
    tokens = cfg["train"]["batch_size"] * cfg["model"]["seq_len"]
    flops = train_flops_per_token(cfg["model"]) * tokens
    result = {
        "case": f"{arch}-d{d}",
        "threads": threads,
        "precision": precision,
        "step_s": round(step_s, 4),
        "model_gflop_per_step": round(flops / 1e9, 3),
        "achieved_gflops": round(flops / step_s / 1e9, 2),
        "peak_gflops": round(peak / 1e9, 2),
        "efficiency": round(flops / step_s / peak, 3),
        **extra,
    }
    log(result)
    return result


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--widths", type=int, nargs="+", default=list(WIDTHS))
    p.add_argument("--archs", nargs="+", default=list(ARCHS), choices=list(ARCHS))
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument(
        "--precisions",
        nargs="+",
        default=["fp32", "bf16"],
        choices=list(DTYPES),
        help="bf16: the step under bf16 autocast, against the bf16 matmul peak",
    )
    p.add_argument("--steps", type=int, default=2, help="steps per timed block")
    p.add_argument("--rounds", type=int, default=3, help="timed blocks per case (best one counts)")
    p.add_argument("--peak-size", type=int, default=2048, help="n of the n x n x n matmul that sets the peak")
    p.add_argument("--no-profile", dest="profile", action="store_false", help="skip the per-case time breakdown")
    p.add_argument("--quick", action="store_true", help="smoke pass: d 64, 1 thread, one step")
    a = p.parse_args(argv)
    if a.quick:
        a.widths, a.threads, a.precisions, a.steps, a.rounds, a.peak_size = [64], [1], ["fp32"], 1, 1, 512
    results, peaks = [], {}
    for precision in a.precisions:
        for threads in a.threads:
            t0 = time.perf_counter()
            peak = peaks[f"{precision}-{threads}t"] = peak_flops(threads, a.peak_size, 3 if a.quick else 8, precision)
            log(f"{precision} peak at {threads} thread(s): {peak / 1e9:.1f} GFLOP/s ({time.perf_counter() - t0:.1f} s)")
            for arch in a.archs:
                for d in a.widths:
                    results.append(measure(arch, d, threads, precision, peak, a.steps, a.rounds, a.profile))
    wide = [r["efficiency"] for r in results if r["precision"] == "fp32" and int(r["case"].split("-d")[1]) >= 256]
    return emit(
        "hardware_efficiency",
        "fp32 efficiency >= 0.5 of measured peak at d_model >= 256",
        {
            "min_efficiency_d256_up": min(wide) if wide else None,
            "peak_gflops": {k: round(v / 1e9, 2) for k, v in peaks.items()},
        },
        results=results,
    )


if __name__ == "__main__":
    main()
