"""The coordinate check, for real: a tiny MoE trained a few steps at widths
32-256 (8x) on the real corpus, activations measured by forward hooks.

What to expect (spec section 3). Adam moves every weight entry by about lr
per step whatever the width, so a weight with fan-in d changes its output by
about lr * d once its gradient is aligned with its input. Under sp nothing
compensates: once these updates outgrow the (width-independent) init, the
RMS of hidden and output activations grows like the width, up to 8x here.
Under muP the hidden weights' lr is divided by m and the head's and router's
logits by m, so the update's contribution is the base model's at every width;
the init contributions are width-independent or shrink (head and router logits
at init ~ 1/sqrt(m)). So: under muP no layer type may grow by more than 2x
from width 32 to 256 at any step >= 1 (what remains are finite-width effects);
under sp, attention and FFN/experts outputs grow >= 3x by the last step.
The lr, 1e-2, is microsoft/mup's Adam coord-check lr: large enough that the
updates dominate the init at the wide end within 3 steps.
"""

import polars as pl
import pytest

from rlrs.coordcheck import LAYER_TYPES, coordcheck, growth
from tests._train_fixtures import tiny

WIDTHS = [32, 64, 128, 256]
STEPS, SEEDS, LR = 3, 2, 1e-2


def _config(moe: bool = True, **model) -> dict:
    cfg = tiny(moe=moe, model__d_ff=128, data__eval_tokens=1024, optim__lr=LR)
    cfg["model"].update(model)
    return cfg


def _growth(frame: pl.DataFrame) -> dict[tuple[str, int], float]:
    return {(r["layer_type"], r["step"]): r["growth"] for r in growth(frame).iter_rows(named=True)}


@pytest.fixture(scope="module", params=[True, False], ids=["moe", "dense"])
def mup_run(request, tmp_path_factory):
    """muP (router as an output weight) through the command line."""
    import yaml

    from rlrs.cli import main

    d = tmp_path_factory.mktemp("coordcheck")
    cfg = _config(request.param, parametrization="mup", base_d_model=32, router_parametrization="mup")
    (d / "mup.yaml").write_text(yaml.safe_dump(cfg))
    code = main(
        [
            "coordcheck",
            str(d / "mup.yaml"),
            "--widths",
            ",".join(map(str, WIDTHS)),
            "--steps",
            str(STEPS),
            "--seeds",
            str(SEEDS),
            "--out",
            str(d / "out"),
        ]
    )
    assert code == 0
    return request.param, d / "out"


def test_mup_activations_stay_flat_across_8x_width(mup_run):
    moe, out = mup_run
    frame = pl.read_parquet(out / "coordcheck.parquet")
    assert sorted(frame["width"].unique()) == WIDTHS and frame["seed"].n_unique() == SEEDS
    kinds = set(LAYER_TYPES) - (set() if moe else {"router logits"})
    assert set(frame["layer_type"]) == kinds
    g = _growth(frame)
    assert {k for k, _ in g} == kinds and {s for _, s in g} == set(range(STEPS + 1))
    for (kind, step), ratio in g.items():
        if step >= 1:
            assert ratio <= 2.0, (kind, step, ratio)
    for name in ("coordcheck.png", "coordcheck.html"):
        assert (out / name).stat().st_size > 1000


@pytest.mark.parametrize("moe", [True, False], ids=["moe", "dense"])
def test_sp_activations_grow_with_width(moe):
    g = _growth(coordcheck(_config(moe), WIDTHS, steps=STEPS, seeds=SEEDS))
    for kind in ("attention out", "ffn out"):
        assert g[kind, STEPS] >= 3.0, (kind, g[kind, STEPS])


def test_mup_with_the_branch_router_leaves_router_logits_growing():
    """router: sp (the authors' branch: base-variance init, base lr, no
    multiplier) is not width-stable: the router's logit updates grow like the
    width, as sp's do. Everything else stays flat."""
    g = _growth(coordcheck(_config(parametrization="mup", base_d_model=32), WIDTHS, steps=STEPS, seeds=SEEDS))
    assert g["router logits", STEPS] >= 3.0, g["router logits", STEPS]
    for kind in ("embedding out", "attention out", "head logits"):
        assert all(g[kind, s] <= 2.0 for s in range(1, STEPS + 1)), kind


@pytest.mark.parametrize(
    "args, message",
    [
        (["--widths", "64,32"], "--widths: '64,32': give at least two increasing positive widths"),
        (["--widths", "32,x"], "--widths: '32,x' is not a comma-separated list of integers"),
        (["--widths", "32,33"], "--widths 33: model.n_heads: 2 must divide d_model=33"),
        (["--widths", "32,64", "--steps", "0"], "--steps: must be at least 1"),
        (["--widths", "32,64", "--lr", "-1"], "--lr: -1.0 is not a positive number"),
    ],
)
def test_bad_coordcheck_input_is_refused_naming_the_option(tmp_path, capsys, args, message):
    import yaml

    from rlrs.cli import main

    (tmp_path / "c.yaml").write_text(yaml.safe_dump(_config()))
    assert main(["coordcheck", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "out"), *args]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
