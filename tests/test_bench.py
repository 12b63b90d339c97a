"""The benchmarks run and report (no timing assertions: CI machines vary), and
the optimised MoE dispatch computes what the plain per-expert definition does."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from bench.__main__ import BENCHMARKS, last_json
from rlrs.model import ModelConfig, MoE

ROOT = Path(__file__).resolve().parent.parent


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _check_trainer_overhead(r):
    assert _number(r["max_overhead"])
    (case,) = r["results"]
    assert case["case"] == "moe-d64" and case["threads"] == 1
    assert case["bare_steps_per_s"] > 0 and case["rlrs_steps_per_s"] > 0
    assert set(case["adamw_step_ms"]) == {"for_loop", "foreach", "fused"}


def _check_hardware_efficiency(r):
    assert r["min_efficiency_d256_up"] is None  # quick mode measures d 64 only
    assert r["peak_gflops"]["fp32-1t"] > 0
    assert [c["case"] for c in r["results"]] == ["dense-d64", "moe-d64"]
    for c in r["results"]:
        assert c["precision"] == "fp32" and 0 < c["efficiency"] and c["model_gflop_per_step"] > 0
        assert sum(c["time_share"].values()) == pytest.approx(1.0, abs=0.01)
        assert "matmul" in c["time_share"]


def _check_moe_dispatch(r):
    (case,) = r["results"]
    assert (case["d_model"], case["granularity"]) == (128, 2)
    assert case["step_ratio"] > 0 and case["layer_ratio"] > 0
    assert 0 <= case["dropped_frac_last_step"] < 1
    assert r["max_step_ratio"] == case["step_ratio"]


def _check_results_at_scale(r):
    (case,) = r["results"]
    # 10 runs = 2 sizes x 1 seed x (baseline, rlrs, 3 ladder lengths of 1000/1500/3000 steps)
    assert case["runs"] == 10
    assert case["metric_rows"] == 2 * (2 * 2000 + 1000 + 1500 + 3000)
    assert case["speedup_rows"] > 0  # the speedup view found the arms and the ladder
    for key in ("ingest_s", "speedup_query_s", "report_s", "html_mb", "ingest_maxrss_mb", "report_maxrss_mb"):
        assert case[key] > 0, key
    assert r["growth"]["ingest_s"] == []  # one study size: no growth exponent


def _check_pipeline_overhead(r):
    assert r["runs"] == 2 and r["cores"] == 1
    assert _number(r["overhead_per_run_s"]) and _number(r["grouped_overhead_per_run_s"])
    assert r["wall_s"] > r["train_s_sum"] > 0
    assert _number(r["batched_overhead_per_run_s"]) and r["batched_wall_s"] > r["batched_train_s_sum"] > 0
    assert r["runs_per_job"] == 2 and r["executor"] == "local"
    assert set(r["parts"]) >= {
        "fixed_s",
        "plan_job_s",
        "rlrs_train_s",
        "torch_import_s",
        "dynamo_import_s",
        "submitit_job_s",
        "submit_noop_s",
        "snakemake_trivial_job_s",
    }


def _check_demo_e2e(r):
    assert r["study"] == "workflow/configs/smoke.yaml"
    # stage 1 on seed 100: rlrs 3 grid points (bracketed), the baseline 3 + 1 beyond its high edge;
    # stage 2: 2 arms x 3 seeds + 3 x0.5 ladder runs
    assert r["runs"] == r["completed"] == 16
    assert r["wall_s"] > r["train_s_sum"] / r["cores"]
    assert r["report_mb"] > 0


def _check_compiled_step(r):
    (case,) = r["results"]
    assert case["case"] == "dense-d32-fp32"
    assert case["eager_step_ms"] > 0 and case["compiled_step_ms"] > 0 and case["compile_s"] > 0
    assert r["compiled_over_eager"] == {"dense-d32-fp32": case["compiled_over_eager"]}
    if case["compiled_step_ms"] < case["eager_step_ms"]:
        assert case["break_even_steps"] > 0
    else:
        assert case["break_even_steps"] is None


def _check_bf16_parity(r):
    assert r["steps"] == 20 and r["seeds"] == 2
    (name,) = r["cases"]
    case = r["cases"][name]
    assert name == "moe-d32" and case["seeds"] == [0, 1] and len(case["bf16_losses"]) == 2
    assert 0 <= case["welch_p"] <= 1 and case["parity"] == (case["welch_p"] >= 0.05 and case["within_2se"])
    assert case["ci90_diff"][0] <= case["mean_diff"] <= case["ci90_diff"][1]
    assert r["timing"][name]["step_ratio_bf16_fp32"] > 0


CHECKS = {
    "trainer_overhead": _check_trainer_overhead,
    "hardware_efficiency": _check_hardware_efficiency,
    "moe_dispatch": _check_moe_dispatch,
    "compiled_step": _check_compiled_step,
    "bf16_parity": _check_bf16_parity,
    "results_at_scale": _check_results_at_scale,
    "pipeline_overhead": _check_pipeline_overhead,
    "demo_e2e": _check_demo_e2e,
}


def test_every_benchmark_has_a_check():
    assert set(CHECKS) == set(BENCHMARKS)


@pytest.mark.slow  # real training, DuckDB files, Snakemake
@pytest.mark.parametrize("name", BENCHMARKS)
def test_benchmark_quick_mode_prints_its_result_last(name):
    proc = subprocess.run(
        [sys.executable, "-m", f"bench.{name}", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = last_json(proc.stdout)
    assert result["benchmark"] == name
    assert result["goal"]
    assert result["machine"]["nproc"] >= 1
    CHECKS[name](result)


def test_runner_refuses_an_unknown_benchmark():
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "trainer_overhead", "nope"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert "unknown benchmark(s) nope; allowed: trainer_overhead, hardware_efficiency" in proc.stderr


def test_last_json_wants_an_object_on_the_last_line():
    assert last_json('progress\n{"a": 1}\n\n') == {"a": 1}
    with pytest.raises(ValueError):
        last_json('{"a": 1}\n[1, 2]\n')
    with pytest.raises(ValueError):
        last_json("")


# ------------------------------------------------- MoE dispatch vs definition


def reference_moe(layer: MoE, x: torch.Tensor):
    """The MoE layer by its definition, one expert at a time: each expert
    takes its assignments in priority order (all first choices before any
    second choice, tokens in sequence order) up to capacity; a token's output
    is the gate-weighted sum of its kept experts' SwiGLU outputs."""
    m = layer.m
    E, k = m.experts_total, m.k_total
    flat = x.reshape(-1, x.shape[-1])
    N = flat.shape[0]
    logits = flat @ layer.router.weight.t()
    probs = logits.softmax(-1)
    gate, choice = probs.topk(k, dim=-1)
    capacity = math.ceil(m.capacity_factor * N * k / E)
    y = torch.zeros_like(flat)
    kept = 0
    counts = torch.zeros(E)
    ex = layer.experts
    for e in range(E):
        queue = [(n, r) for r in range(k) for n in range(N) if choice[n, r] == e]
        counts[e] = len(queue)
        queue = queue[:capacity]
        kept += len(queue)
        if not queue:
            continue
        tokens = torch.tensor([n for n, _ in queue])
        w = torch.stack([gate[n, r] for n, r in queue]).unsqueeze(1)
        h = flat[tokens]
        out = (F.silu(h @ ex.gate[e]) * (h @ ex.up[e])) @ ex.down[e]
        y = y.index_add(0, tokens, out * w)
    lb = E * torch.sum(counts / (N * k) * probs.mean(0))
    z = torch.logsumexp(logits, -1).pow(2).mean()
    return y.view_as(x), {"lb_loss": lb, "z_loss": z, "dropped_frac": 1 - kept / (N * k)}


@pytest.mark.parametrize(
    "moe",
    [
        dict(n_experts=8, top_k=1),  # the paper's top-1
        dict(n_experts=4, top_k=1, granularity=4),  # fine-grained: 16 experts, top-4
        dict(n_experts=4, top_k=2, capacity_factor=0.5),  # heavy dropping
        dict(n_experts=4, top_k=2, capacity_factor=2.0),  # spare capacity: empty slots
    ],
    ids=["top1", "granularity4", "drops", "spare"],
)
def test_moe_dispatch_matches_the_per_expert_definition(moe):
    torch.manual_seed(0)
    cfg = ModelConfig.from_dict(dict(vocab_size=50, seq_len=16, d_model=32, n_layers=1, n_heads=2, d_ff=64, moe=moe))
    layer = MoE(cfg)
    x = torch.randn(3, 16, 32, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()

    y, aux = layer(x)
    y_ref, aux_ref = reference_moe(layer, x_ref)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-6)
    assert aux["dropped_frac"].item() == pytest.approx(aux_ref["dropped_frac"], abs=1e-7)
    if cfg.moe.capacity_factor < 1:
        assert aux["dropped_frac"].item() > 0.2
    torch.testing.assert_close(aux["lb_loss"], aux_ref["lb_loss"])
    torch.testing.assert_close(aux["z_loss"], aux_ref["z_loss"])

    # Same gradients for the input, the router and every expert weight.
    g = torch.randn_like(y)
    grads = torch.autograd.grad((y * g).sum() + aux["lb_loss"], [x, *layer.parameters()])
    grads_ref = torch.autograd.grad((y_ref * g).sum() + aux_ref["lb_loss"], [x_ref, *layer.parameters()])
    for a, b in zip(grads, grads_ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_moe_layer_runs_under_bf16_autocast_like_a_dense_layer():
    """Under autocast the experts compute in bf16; the combine must follow
    (it used to add bf16 outputs into an fp32 buffer and fail)."""
    torch.manual_seed(0)
    cfg = ModelConfig.from_dict(
        dict(vocab_size=50, seq_len=16, d_model=32, n_layers=1, n_heads=2, d_ff=64, moe=dict(n_experts=4, top_k=2))
    )
    layer = MoE(cfg)
    x = torch.randn(2, 16, 32, requires_grad=True)
    y32, _ = layer(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y16, aux = layer(x)
        (y16.float().square().mean() + aux["lb_loss"]).backward()
    assert y16.dtype == torch.bfloat16 and aux["lb_loss"].dtype == torch.float32
    torch.testing.assert_close(y16.float(), y32, rtol=0.05, atol=0.02)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in layer.parameters())
