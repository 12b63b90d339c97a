"""muP as a parametrization: the table as applied by the model (init, forward
multipliers) and the optimizer (groups, lr and weight-decay factors), its
composition with the relative schedule during a real run, and its config."""

import math

import numpy as np
import pytest
import torch

from rlrs.config import resolve, run_id
from rlrs.errors import ConfigError
from rlrs.model import GPT, ModelConfig
from rlrs.parametrization import ROLES, factors, role_of_parameters
from rlrs.schedule import lr_at
from rlrs.train import Trainer, parameter_groups
from tests._train_fixtures import tiny

DEPTH_ROLES = {"attention_out", "ffn_out", "experts_out"}


def _model(moe: bool, seed: int = 0, **model) -> GPT:
    cfg = resolve(tiny(moe=moe, **{f"model__{k}": v for k, v in model.items()}))
    torch.manual_seed(seed)
    return GPT(ModelConfig.from_dict(cfg["model"]))


def _roles(model: GPT) -> dict[str, str]:
    role = role_of_parameters(model)
    return {name: role[id(p)] for name, p in model.named_parameters()}


@pytest.mark.parametrize("moe", [False, True])
def test_every_parameter_has_a_role_of_its_component(moe):
    from rlrs.components import named_components

    model = _model(moe)
    roles, comps = _roles(model), named_components(model)
    assert set(roles) == set(comps)
    by_role = {r["role"]: r["component"] for r in factors(model.cfg)}
    for name, role in roles.items():
        assert by_role[role] == comps[name], name
    used = set(roles.values())
    assert used == set(ROLES) - ({"ffn_in", "ffn_out"} if moe else {"router", "experts_in", "experts_out"})


@pytest.mark.parametrize("moe", [False, True])
def test_mup_init_at_m1_differs_from_sp_only_by_the_depth_factor(moe):
    """Same seed, base_d_model = d_model (m = 1): every parameter is the sp
    one exactly, except the output projections, scaled by 1 / sqrt(2 L)."""
    sp = _model(moe, n_layers=3)
    mup = _model(moe, n_layers=3, parametrization="mup", base_d_model=32)
    roles = _roles(mup)
    mup_params = dict(mup.named_parameters())
    depth = 1 / math.sqrt(2 * 3)
    for name, p in sp.named_parameters():
        q = mup_params[name]
        if roles[name] in DEPTH_ROLES:
            torch.testing.assert_close(q, p * depth, rtol=1e-6, atol=0)
            assert not torch.equal(q, p)
        else:
            assert torch.equal(q, p), name


@pytest.mark.parametrize("moe", [False, True])
def test_mup_init_at_m4_scales_each_role_by_its_table_factor(moe):
    """Same seed and shapes (d_model 32, base 8: m = 4): a weight's values are
    the sp ones times sqrt(k * m): 2 for the base-variance rows (embedding,
    router, head), 1 for the hidden inputs, 1 / sqrt(2 L) for the outputs."""
    sp = _model(moe, n_layers=2)
    mup = _model(moe, n_layers=2, parametrization="mup", base_d_model=8)
    roles = _roles(mup)
    expect = {
        "embedding_token": 2.0,
        "embedding_position": 2.0,
        "router": 2.0,
        "head": 2.0,
        "attention_qkv": 1.0,
        "ffn_in": 1.0,
        "experts_in": 1.0,
        "norm": 1.0,
        "attention_out": 0.5,
        "ffn_out": 0.5,
        "experts_out": 0.5,
    }
    mup_params = dict(mup.named_parameters())
    for name, p in sp.named_parameters():
        torch.testing.assert_close(mup_params[name], p * expect[roles[name]], rtol=1e-6, atol=0, msg=name)


def test_table_as_built_at_m4():
    cfg = ModelConfig.from_dict(
        {
            "d_model": 256,
            "n_layers": 3,
            "n_heads": 4,
            "parametrization": "mup",
            "base_d_model": 64,
            "alpha_in": 5.0,
            "alpha_out": 0.2,
            "attention_mult": 4.0,
            "router_parametrization": "sp",
        }
    )
    rows = {r["role"]: (r["init_k"], r["lr"], r["weight_decay"], r["forward"]) for r in factors(cfg)}
    assert rows == {
        "embedding_token": (1.0, 1.0, 1.0, 5.0),
        "embedding_position": (1.0, 1.0, 1.0, 5.0),
        "attention_qkv": (0.25, 0.25, 4.0, 4.0 / 64),
        "attention_out": (1 / 24, 0.25, 4.0, None),
        "ffn_in": (0.25, 0.25, 4.0, None),
        "ffn_out": (1 / 24, 0.25, 4.0, None),
        "experts_in": (0.25, 0.25, 4.0, None),
        "experts_out": (1 / 24, 0.25, 4.0, None),
        "router": (1.0, 1.0, 1.0, None),
        "head": (1.0, 1.0, 1.0, 0.2 / 4),
        "norm": (None, 1.0, 1.0, None),
    }
    router_mup = ModelConfig(**{**cfg.to_dict(), "router_parametrization": "mup"})
    assert [r for r in factors(router_mup) if r["role"] == "router"][0]["forward"] == 0.25
    sp = ModelConfig.from_dict({"d_model": 256, "n_layers": 3})
    assert {(r["init_vs_sp"], r["lr"], r["weight_decay"], r["forward"]) for r in factors(sp)} == {(1.0, 1.0, 1.0, None)}


def test_forward_multipliers():
    """A muP model holding an sp model's weights: the embedding output times
    alpha_in, the head and router logits times alpha_out / m and 1 / m, and
    attention logits mult / d_head; at m = 1 with the default multipliers
    the whole forward is sp's."""
    idx = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(0))
    sp = _model(True)
    same = _model(True, parametrization="mup", base_d_model=32, router_parametrization="mup")
    same.load_state_dict(sp.state_dict())
    torch.testing.assert_close(same(idx)[0], sp(idx)[0], rtol=1e-5, atol=1e-6)

    mup = _model(True, parametrization="mup", base_d_model=8, alpha_in=3.0, alpha_out=0.5, router_parametrization="mup")
    mup.load_state_dict(sp.state_dict())
    x = torch.randn(2, 16, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(mup.embed(idx), sp.embed(idx) * 3.0)
        assert torch.equal(mup.head(x), sp.head(x) * (0.5 / 4))
        r_sp, r_mup = sp.blocks[0].ffn.router, mup.blocks[0].ffn.router
        assert torch.equal(r_mup(x), r_sp(x) * 0.25)
    # Attention logits: attention_mult / d_head, attention_mult defaulting to
    # sqrt(base_d_model / n_heads) (sp's 1 / sqrt(d_head) at the base width).
    assert mup.blocks[0].attn.scale == math.sqrt(8 / 2) / 16
    assert same.blocks[0].attn.scale == 1 / math.sqrt(16)
    assert sp.blocks[0].attn.scale is None  # scaled_dot_product_attention's own 1 / sqrt(d_head)


def test_mup_router_logits_stay_fp32_under_bf16_autocast():
    """A muP router (router_parametrization: mup) keeps the fp32 routing of
    rlrs.model: under CPU bf16 autocast its logits are the fp32 product
    times 1 / m exactly, not a bf16-rounded one."""
    router = _model(True, parametrization="mup", base_d_model=8, router_parametrization="mup").blocks[0].ffn.router
    x = torch.randn(64, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = router(x)
    assert router.mult == 0.25
    assert logits.dtype == torch.float32 and torch.equal(logits, (x @ router.weight.t()) * 0.25)


@pytest.mark.parametrize("moe", [False, True])
def test_optimizer_groups_partition_parameters_with_the_table_factors(moe):
    sp = _model(moe)
    groups, comps, lr_factors = parameter_groups(sp, 0.1)
    from rlrs.components import component_of_parameters

    by_comp = component_of_parameters(sp)
    assert comps == list(by_comp) and [g["name"] for g in groups] == list(by_comp)
    assert all(f == 1.0 for f in lr_factors) and all(g["weight_decay"] == 0.1 for g in groups)
    assert all(g["params"] == by_comp[c] for g, c in zip(groups, comps))

    mup = _model(moe, parametrization="mup", base_d_model=8)  # m = 4
    groups, comps, lr_factors = parameter_groups(mup, 0.1)
    # The table's lr factor is uniform within every component: one group each.
    assert comps == list(component_of_parameters(mup))
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in mup.parameters()) and len(set(ids)) == len(ids)
    hidden = {"attention", "ffn", "experts"}
    for g, c, f in zip(groups, comps, lr_factors):
        assert (f, g["weight_decay"]) == ((0.25, 0.1 * 4) if c in hidden else (1.0, 0.1)), c


def test_a_component_whose_roles_differ_in_lr_splits_into_groups(monkeypatch, tmp_path):
    """With this table every component's roles share their factors; a table
    where attention's output projection kept the base lr would split the
    component into two groups, each with its own factor, and the run would
    still log one lr_attention (the schedule's value)."""
    import pyarrow.parquet as pq

    from rlrs import parametrization as P

    monkeypatch.setitem(P.MUP, "attention_out", P.Rule("attention", P.sp_var_by_depth, P.one, P.one, None))
    cfg = resolve(tiny(model__parametrization="mup", model__base_d_model=16, train__steps=3, train__eval_interval=3))
    trainer = Trainer(cfg, tmp_path, executor=None, job_id=None)
    names = [g["name"] for g in trainer.optimizer.param_groups]
    assert names == ["embedding", "attention.attention_qkv", "attention.attention_out", "ffn", "head", "norm"]
    qkv, out = trainer.optimizer.param_groups[1:3]
    assert len(qkv["params"]) == len(out["params"]) == 2 and (qkv["weight_decay"], out["weight_decay"]) == (0.2, 0.1)
    assert np.array_equal(trainer.group_lr_table[:, 1], trainer.lr_table[:, 1] * 0.5)
    assert np.array_equal(trainer.group_lr_table[:, 2], trainer.lr_table[:, 1])
    trainer.run()
    columns = pq.read_schema(tmp_path / "metrics.parquet").names
    assert [c for c in columns if c.startswith("lr_")] == [
        f"lr_{c}" for c in ("embedding", "attention", "ffn", "head", "norm")
    ]


def test_group_rates_are_mup_factor_times_the_relative_schedule_at_every_step(tmp_path):
    """A real muP MoE run with RLRS multipliers: the lr of every optimizer
    group at every step (read from param_groups when the optimizer steps) is
    the table's factor times rlrs.schedule's lr_g(t); the logged lr_<component>
    is lr_g(t) itself."""
    import pyarrow.parquet as pq

    mults = {
        "embedding": {"start": 5.0, "end": 0.666},
        "experts": {"start": 0.3, "end": 1.125},
        "router": {"start": 0.666, "end": 1.0},
        "head": {"start": 0.666, "end": 0.444},
    }
    cfg = resolve(
        tiny(
            moe=True,
            model__parametrization="mup",
            model__base_d_model=16,
            train__steps=12,
            train__eval_interval=12,
            schedule__warmup_steps=3,
            schedule__multipliers=mults,
        )
    )
    trainer = Trainer(cfg, tmp_path, executor=None, job_id=None)
    seen = []
    real_step = trainer.optimizer.step

    def step(*a, **k):
        seen.append([(g["name"], g["lr"], g["weight_decay"]) for g in trainer.optimizer.param_groups])
        return real_step(*a, **k)

    trainer.optimizer.step = step
    trainer.run()
    m = 2.0  # d_model 32 / base 16
    factor = {"embedding": 1.0, "attention": 1 / m, "router": 1.0, "experts": 1 / m, "head": 1.0, "norm": 1.0}
    s = cfg["schedule"]
    assert len(seen) == 12 and [n for n, _, _ in seen[0]] == list(factor)
    metrics = pq.read_table(tmp_path / "metrics.parquet").to_pydict()
    for t, groups in enumerate(seen):
        for name, lr, wd in groups:
            mult = s["multipliers"][name]
            lr_g = lr_at(
                s["shape"], 0.003, s["final_lr_fraction"], s["warmup_steps"], 12, mult["start"], mult["end"], t
            )
            assert lr == factor[name] * lr_g, (t, name)
            assert wd == 0.1 / factor[name]
            assert metrics[f"lr_{name}"][t] == lr_g
    assert len({lr for _, lr, _ in seen[5]}) == 6  # the groups really differ


# ------------------------------------------------------------------ config


@pytest.mark.parametrize(
    "overrides, field, allowed",
    [
        ({"model__parametrization": "mu-p"}, "model.parametrization", "allowed: sp, mup"),
        (
            {
                "model__parametrization": "mup",
                "model__moe": {"n_experts": 4},
                "model__router_parametrization": "output",
            },
            "model.router_parametrization",
            "allowed: sp, mup",
        ),
        ({"model__parametrization": "mup"}, "model.base_d_model", "required under model.parametrization: mup"),
        ({"model__parametrization": "mup", "model__base_d_model": 0}, "model.base_d_model", ">= 1"),
        ({"model__parametrization": "mup", "model__base_d_model": -64}, "model.base_d_model", ">= 1"),
        ({"model__parametrization": "mup", "model__base_d_model": 16.5}, "model.base_d_model", "integer >= 1"),
        ({"model__parametrization": "mup", "model__base_d_model": 15}, "model.base_d_model", "a multiple of n_heads=2"),
        ({"model__parametrization": "mup", "model__base_d_model": 16, "model__alpha_out": 0}, "model.alpha_out", "> 0"),
        ({"model__base_d_model": 16}, "model.base_d_model", "only used under model.parametrization: mup"),
        ({"model__alpha_in": 5.0}, "model.alpha_in", "only used under model.parametrization: mup"),
        (
            {"model__router_parametrization": "mup"},
            "model.router_parametrization",
            "only used under model.parametrization: mup",
        ),
    ],
)
def test_bad_parametrization_config_names_field_and_allowed_values(overrides, field, allowed):
    with pytest.raises(ConfigError) as err:
        resolve(tiny(**overrides))
    assert err.value.field == field
    assert allowed in str(err.value)


def test_sp_configs_resolve_as_before():
    """An sp config resolves without the muP fields (so every committed run
    keeps its run id: tests/test_run_ids.py); an explicit `parametrization:
    sp` changes nothing."""
    plain = resolve(tiny(moe=True))
    assert "parametrization" not in plain["model"]
    assert resolve(tiny(moe=True, model__parametrization="sp")) == plain


def test_mup_config_resolves_completely_and_idempotently():
    cfg = resolve(tiny(moe=True, model__parametrization="mup", model__base_d_model=16, model__alpha_in=2))
    m = cfg["model"]
    assert (m["parametrization"], m["base_d_model"], m["router_parametrization"]) == ("mup", 16, "sp")
    assert m["alpha_in"] == 2.0 and isinstance(m["alpha_in"], float) and m["alpha_out"] == 1.0
    assert m["attention_mult"] == math.sqrt(16 / 2)
    assert resolve(cfg) == cfg
    assert run_id(cfg) == run_id(
        resolve(tiny(moe=True, model__parametrization="mup", model__base_d_model=16, model__alpha_in=2.0))
    )
    assert run_id(cfg) != run_id(
        resolve(tiny(moe=True, model__parametrization="mup", model__base_d_model=8, model__alpha_in=2.0))
    )
    dense = resolve(tiny(model__parametrization="mup", model__base_d_model=16, model__router_parametrization="mup"))
    assert "router_parametrization" not in dense["model"]  # a dense model has no router
    assert np.isclose(dense["model"]["attention_mult"], math.sqrt(8))


# ------------------------------------------------------------------ studies


def test_a_study_sets_the_parametrization_per_size_and_in_defaults():
    """A size's own muP fields, or `defaults.model`, reach the resolved run
    configs; a bad value is refused naming the size, arm and field."""
    from rlrs.study import check_study, expand
    from rlrs.study.validate import SIZE_MODEL_FIELDS, _schema

    study = {
        "study": "mup-unit",
        "defaults": {"model": {"seq_len": 32, "alpha_out": 0.5}, "train": {"steps": 20}},
        "sizes": {
            "sp": {"d_model": 32, "n_layers": 1, "n_heads": 2},
            "base": {"d_model": 32, "n_layers": 1, "n_heads": 2, "parametrization": "mup", "base_d_model": 32},
            "wide": {"d_model": 128, "n_layers": 1, "n_heads": 2, "parametrization": "mup", "base_d_model": 32,
                     "moe": {"n_experts": 4}, "router_parametrization": "mup", "alpha_in": 2},
        },
        "arms": {"baseline": {}},
    }  # fmt: skip
    with pytest.raises(ConfigError) as err:  # alpha_out from the defaults is refused at the sp size
        expand(check_study(study))
    assert "sizes.sp x arms.baseline" in str(err.value) and "model.alpha_out" in str(err.value)
    assert "only used under model.parametrization: mup" in str(err.value)

    study["sizes"]["sp"]["overrides"] = {"model": {"alpha_out": 1.0}}
    models = {labels["size"]: cfg["model"] for _, cfg, labels in expand(check_study(study))}
    assert "parametrization" not in models["sp"]
    assert (models["base"]["parametrization"], models["base"]["base_d_model"], models["base"]["alpha_out"]) == (
        "mup",
        32,
        0.5,
    )
    wide = models["wide"]
    assert (wide["d_model"], wide["router_parametrization"], wide["alpha_in"], wide["alpha_out"]) == (
        128,
        "mup",
        2.0,
        0.5,
    )

    study["sizes"]["wide"]["parametrization"] = "mu-p"
    with pytest.raises(ConfigError) as err:
        expand(check_study(study))
    assert "sizes.wide x arms.baseline" in str(err.value) and "model.parametrization" in str(err.value)
    assert "allowed: sp, mup" in str(err.value)
    # The study schema's size accepts exactly the model fields size_raw passes on.
    size = _schema()["$defs"]["size"]["properties"]
    assert set(size) - {"steps", "batch_size", "overrides"} == set(SIZE_MODEL_FIELDS)
