"""Components partition the parameters of dense and MoE models."""

import pytest
import torch

from rlrs.components import COMPONENTS, component_of_parameters, named_components
from rlrs.model import GPT, ModelConfig, param_counts


def _models():
    yield "dense", ModelConfig.from_dict(dict(vocab_size=97, seq_len=16, d_model=32, n_layers=3, n_heads=2, d_ff=64))
    yield (
        "moe",
        ModelConfig.from_dict(
            dict(
                vocab_size=97,
                seq_len=16,
                d_model=32,
                n_layers=2,
                n_heads=2,
                d_ff=64,
                moe=dict(n_experts=4, top_k=2, granularity=2),
            )
        ),
    )


@pytest.mark.parametrize("name, cfg", list(_models()))
def test_components_partition_parameters(name, cfg):
    model = GPT(cfg)
    groups = component_of_parameters(model)
    ids = [id(p) for ps in groups.values() for p in ps]
    assert len(ids) == len(set(ids)), "a parameter is in two components"
    assert set(ids) == {id(p) for p in model.parameters()}, "a parameter is in no component"
    assert sum(p.numel() for ps in groups.values() for p in ps) == sum(p.numel() for p in model.parameters())
    expected = {"embedding", "attention", "head", "norm"} | ({"router", "experts"} if cfg.moe else {"ffn"})
    assert set(groups) == expected
    assert list(groups) == [c for c in COMPONENTS if c in expected]


def test_roles_of_named_parameters():
    names = named_components(GPT(dict(_models())["moe"]))
    assert names["embed.tok"] == names["embed.pos"] == "embedding"
    assert names["blocks.0.attn.qkv.weight"] == "attention"
    assert names["blocks.1.ffn.router.weight"] == "router"
    assert names["blocks.1.ffn.experts.down"] == "experts"
    assert names["blocks.0.norm2.weight"] == names["norm.weight"] == "norm"
    assert names["head.weight"] == "head"


def test_parameter_counts():
    cfg = dict(_models())["moe"]
    c = param_counts(cfg)
    d, V, T, L = 32, 97, 16, 2
    E, width = 8, 32  # granularity 2: 8 experts of width 64 / 2
    experts = L * E * 3 * d * width
    assert c["params_by_component"]["experts"] == experts
    assert c["params_by_component"]["router"] == L * E * d
    assert c["params_by_component"]["embedding"] == V * d + T * d
    assert c["params_total"] == sum(p.numel() for p in GPT(cfg).parameters())
    # top-k 4 of 8 experts run per token
    assert c["params_active"] == c["params_total"] - experts // 2
    assert c["params_nonembedding"] == c["params_total"] - (V * d + T * d) - V * d


def test_moe_capacity_drops_and_aux_losses():
    torch.manual_seed(0)
    cfg = ModelConfig.from_dict(
        dict(
            vocab_size=50,
            seq_len=8,
            d_model=16,
            n_layers=1,
            n_heads=2,
            d_ff=32,
            moe=dict(n_experts=4, top_k=1, capacity_factor=0.5),
        )
    )
    model = GPT(cfg)
    x = torch.randint(0, 50, (4, 8))
    _, (loss, ce), aux = model(x, x)
    # capacity 0.5 * 32 / 4 = 4 slots per expert: at least half of the 32 tokens are dropped.
    assert aux["dropped_frac"].item() >= 0.5
    assert 0 < aux["lb_loss"].item() < 4  # E * sum_e share_e * meanprob_e lies in (0, E]
    assert loss.item() == pytest.approx(
        ce.item() + 0.01 * aux["lb_loss"].item() + 0.001 * aux["z_loss"].item(), rel=1e-6
    )
    loss.backward()
    assert model.blocks[0].ffn.router.weight.grad.abs().sum() > 0
