"""The MoE dispatch with fixed shapes (rlrs.model.MoE._slots) against the one
it replaced (boolean-indexed kept assignments, bincount counts), on random
inputs: the same routing, the same capacity drops, the same outputs, aux
losses and gradients."""

from __future__ import annotations

import math
import types

import pytest
import torch

from rlrs.model import ModelConfig, MoE


def previous_slots(layer: MoE, choice: torch.Tensor, gate: torch.Tensor, N: int):
    """rlrs.model.MoE._slots as of commit e380319: kept assignments by
    boolean indexing, counts by bincount (shapes that depend on the data).
    The rest of the forward did not change (the router's fp32 casts are
    no-ops in fp32)."""
    E, k = layer.m.experts_total, layer.m.k_total
    capacity = math.ceil(layer.m.capacity_factor * N * k / E)
    expert = choice.t().reshape(-1)
    weight = gate.t().reshape(-1)
    order = torch.argsort(expert, stable=True)
    counts = torch.bincount(expert, minlength=E)
    first = torch.cumsum(counts, 0) - counts
    expert_sorted = expert[order]
    pos = torch.arange(N * k) - first[expert_sorted]
    kept = pos < capacity
    assignment = order[kept]
    slot = expert_sorted[kept] * capacity + pos[kept]
    slot_token = torch.zeros(E * capacity, dtype=torch.long).index_put_((slot,), assignment % N)
    slot_weight = weight.new_zeros(E * capacity).index_put((slot,), weight[assignment])
    return slot_token, slot_weight, counts, kept


def _run(fn, layer, x):
    """Outputs, aux losses and the gradients of input, router and experts."""
    x = x.detach().clone().requires_grad_()
    layer.zero_grad(set_to_none=True)
    y, aux = fn(x)
    (y.square().mean() + aux["lb_loss"] + aux["z_loss"]).backward()
    grads = [x.grad] + [p.grad for p in layer.parameters()]
    return y.detach(), {k: v.detach() for k, v in aux.items()}, grads


@pytest.mark.parametrize(
    ("top_k", "granularity", "capacity_factor", "d_model"),
    [(1, 1, 1.0, 32), (2, 2, 1.0, 32), (1, 4, 1.0, 64), (1, 2, 0.5, 32), (1, 1, 2.0, 32), (1, 4, 1.25, 64)],
    ids=["top1", "top2-g2", "g4", "heavy-drops", "spare-capacity", "g4-cf1.25"],
)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fixed_shape_dispatch_equals_the_previous_one(top_k, granularity, capacity_factor, d_model, seed):
    torch.manual_seed(seed)
    moe = dict(n_experts=4, top_k=top_k, granularity=granularity, capacity_factor=capacity_factor)
    cfg = ModelConfig.from_dict(dict(d_model=d_model, d_ff=4 * d_model, moe=moe))
    layer = MoE(cfg)
    x = torch.randn(3, 40, d_model) * 2.0  # larger inputs: peaked routing, uneven loads, real drops
    new = _run(layer, layer, x)
    layer._slots = types.MethodType(previous_slots, layer)  # this instance only
    old = _run(layer, layer, x)
    assert torch.equal(new[0], old[0])
    assert new[1].keys() == old[1].keys()
    for name in old[1]:
        assert torch.equal(new[1][name], old[1][name]), name
    for a, b in zip(new[2], old[2]):
        assert torch.equal(a, b)
    if capacity_factor <= 1.0:
        assert old[1]["dropped_frac"] > 0  # the case exercises capacity drops
    if capacity_factor == 2.0:
        assert old[1]["dropped_frac"] == 0  # ... and empty slots


def test_router_and_loss_stay_fp32_under_bf16_autocast():
    """Under CPU bf16 autocast the experts run in bf16, but the router's
    logits are the fp32 product (not bf16-rounded) and the loss is fp32."""
    from rlrs.model import GPT

    torch.manual_seed(0)
    model = GPT(
        ModelConfig.from_dict(dict(vocab_size=256, d_model=32, n_heads=2, d_ff=128, seq_len=16, moe=dict(n_experts=4)))
    )
    x = torch.randn(64, 32)
    router = model.blocks[0].ffn.router
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = router(x)
        hidden = model.blocks[0].ffn.experts(x.view(4, 16, 32))
        idx = torch.randint(0, 256, (2, 16))
        _, (loss, ce), aux = model(idx, idx)
    assert logits.dtype == torch.float32 and torch.equal(logits, x @ router.weight.t())
    assert hidden.dtype == torch.bfloat16
    assert loss.dtype == ce.dtype == aux["z_loss"].dtype == torch.float32
