"""Coordinate check: is a parametrization width-stable? (microsoft/mup's
diagnostic, spec shared/spec/mup-moe.md section 3.)

One run config is trained at several widths for a few steps, at the same lr,
for a few seeds. Width changes d_model (and d_ff in proportion); n_heads is
kept, so d_head grows with width, as in microsoft/mup's Transformer coord
check (which is where muP's 1 / d_head attention scale matters). The
schedule is constant with no warmup, so every step runs at the config's lr
(times its relative start multipliers).

At init (step 0) and after each optimizer step, one fixed held-out batch
(the first evaluation batch) goes through the model, and forward hooks take
the RMS of each layer's output: embedding out, attention out, FFN / experts
out, router logits, head logits. Under the standard parametrization the
updates of hidden and output weights add O(lr * width) to these, so the RMS
grows with width after a step; under a correct muP it stays flat.

`rlrs coordcheck` (rlrs.cli) writes, atomically, OUT/coordcheck.parquet (one row per width, seed, step and
layer) and OUT/coordcheck.png and .html (RMS vs width, one line per step, one
panel per layer type; RMS pooled over a type's layers, averaged over seeds).
"""

from __future__ import annotations

import copy
import math
import tempfile
from pathlib import Path

import polars as pl

from rlrs import atomic
from rlrs.config import resolve
from rlrs.errors import ConfigError

LAYER_TYPES = ("embedding out", "attention out", "ffn out", "router logits", "head logits")


def width_config(cfg: dict, width: int, steps: int, seed: int, lr: float | None) -> dict:
    """The run config of one coordinate-check run: cfg at d_model = width
    (d_ff in proportion, heads kept), `steps` steps at a constant lr."""
    base = cfg["model"]["d_model"]
    out = copy.deepcopy(cfg)
    out.pop("run_id", None)
    model = out["model"]
    if model["d_ff"] * width % base:
        raise ConfigError(f"--widths {width}", f"gives d_ff = {model['d_ff']} * {width} / {base}, not an integer")
    # Under mup the resolved base_d_model and attention_mult are kept: m grows with width.
    model.update(d_model=width, d_ff=model["d_ff"] * width // base)
    out["seed"] = seed
    out["schedule"] = {**out["schedule"], "shape": "constant", "warmup_steps": 0}
    out["train"] = {**out["train"], "steps": steps, "eval_interval": steps}
    if lr is not None:
        out["optim"] = {**out["optim"], "lr": lr}
    try:
        return resolve(out)
    except ConfigError as e:
        raise ConfigError(f"--widths {width}", str(e)) from None


def _layer_types(model) -> dict[str, str]:
    """module name -> layer type, for the modules whose output is recorded."""
    from rlrs.model import Attention, Embedding, Head, MoE, Router, SwiGLU

    kinds = (
        (Embedding, "embedding out"),
        (Attention, "attention out"),
        ((SwiGLU, MoE), "ffn out"),
        (Router, "router logits"),
        (Head, "head logits"),
    )
    out = {}
    for name, module in model.named_modules():
        for cls, kind in kinds:
            if isinstance(module, cls):
                out[name] = kind
    return out


def measure(cfg: dict, workdir: Path) -> list[dict]:
    """Train one resolved config for its steps; the RMS of every recorded
    layer's output on a fixed batch at init and after each step."""
    import torch

    from rlrs.train import Trainer

    trainer = Trainer(cfg, workdir, executor=None, job_id=None)
    model = trainer.model
    types = _layer_types(model)
    rms: dict[str, float] = {}

    def hook(name):
        def record(module, args, output):
            y = output[0] if isinstance(output, tuple) else output
            rms[name] = y.detach().float().pow(2).mean().sqrt().item()

        return record

    handles = [module.register_forward_hook(hook(name)) for name, module in model.named_modules() if name in types]
    x, y = trainer.eval_set[0]
    rows = []
    try:
        for step in range(cfg["train"]["steps"] + 1):
            if step:
                trainer.train_step(step - 1)
            with torch.no_grad(), trainer.autocast:
                model(x, y)
            rows += [{"step": step, "layer": name, "layer_type": types[name], "rms": v} for name, v in rms.items()]
    finally:
        for h in handles:
            h.remove()
    return rows


def coordcheck(cfg: dict, widths: list[int], steps: int = 5, seeds: int = 3, lr: float | None = None) -> pl.DataFrame:
    """Every width x seed, trained and measured: one row per width, seed,
    step and layer (width, seed, step, layer, layer_type, rms)."""
    if steps < 1 or seeds < 1:
        raise ConfigError("--steps" if steps < 1 else "--seeds", "must be at least 1")
    if lr is not None and not (lr > 0 and math.isfinite(lr)):
        raise ConfigError("--lr", f"{lr} is not a positive number")
    cfg = resolve(cfg)
    runs = [
        (w, cfg["seed"] + i, width_config(cfg, w, steps, cfg["seed"] + i, lr)) for w in widths for i in range(seeds)
    ]
    rows = []
    with tempfile.TemporaryDirectory(prefix="rlrs-coordcheck-") as tmp:
        for w, seed, run_cfg in runs:
            rows += [{"width": w, "seed": seed, **r} for r in measure(run_cfg, Path(tmp))]
    return pl.DataFrame(rows).with_columns(
        parametrization=pl.lit(cfg["model"].get("parametrization", "sp")),
        lr=pl.lit(runs[0][2]["optim"]["lr"]),
    )


def by_type(frame: pl.DataFrame) -> pl.DataFrame:
    """RMS per width, step and layer type: pooled over the type's layers
    (root of the mean square; the layers of a type have equal sizes), then
    averaged over seeds."""
    pooled = frame.group_by("width", "seed", "step", "layer_type").agg(rms=pl.col("rms").pow(2).mean().sqrt())
    return pooled.group_by("width", "step", "layer_type").agg(pl.col("rms").mean()).sort("layer_type", "step", "width")


def growth(frame: pl.DataFrame) -> pl.DataFrame:
    """Per step and layer type: RMS at the widest width / RMS at the narrowest."""
    t = by_type(frame)
    lo, hi = t["width"].min(), t["width"].max()
    narrow = t.filter(pl.col("width") == lo).select("step", "layer_type", narrow="rms")
    wide = t.filter(pl.col("width") == hi).select("step", "layer_type", wide="rms")
    return (
        narrow.join(wide, on=["step", "layer_type"])
        .with_columns(growth=pl.col("wide") / pl.col("narrow"))
        .sort("layer_type", "step")
    )


def figure(frame: pl.DataFrame):
    """RMS vs width (log-log), one line per step, one panel per layer type."""
    import altair as alt

    t = by_type(frame)
    par, lr = frame["parametrization"][0], frame["lr"][0]
    seeds = frame["seed"].n_unique()
    types = [k for k in LAYER_TYPES if k in set(t["layer_type"])]
    return (
        alt.Chart(t)
        .mark_line(point=True)
        .encode(
            x=alt.X(
                "width:Q",
                scale=alt.Scale(type="log", base=2),
                axis=alt.Axis(values=sorted(set(t["width"]))),
                title="width (d_model)",
            ),
            y=alt.Y("rms:Q", scale=alt.Scale(type="log"), title="activation RMS"),
            color=alt.Color("step:O", title="step", scale=alt.Scale(scheme="viridis")),
            tooltip=["layer_type:N", "width:Q", "step:O", alt.Tooltip("rms:Q", format=".4g")],
        )
        .properties(width=170, height=150)
        .facet(column=alt.Column("layer_type:N", sort=types, title=None))
        .resolve_scale(y="independent")
        .properties(
            title=alt.TitleParams(
                f"Coordinate check: {par}, lr {lr:g}",
                subtitle=f"step 0 = init; RMS on a fixed batch, mean of {seeds} seeds",
            )
        )
    )


def write(frame: pl.DataFrame, out: Path) -> list[Path]:
    import vl_convert as vlc

    from rlrs.vega import PNG_SCALE, VL_VERSION

    out = Path(out)
    spec = figure(frame).to_dict()
    paths = [out / "coordcheck.parquet", out / "coordcheck.png", out / "coordcheck.html"]
    atomic.write(paths[0], lambda p: frame.write_parquet(p))
    atomic.write_bytes(paths[1], vlc.vegalite_to_png(spec, vl_version=VL_VERSION, scale=PNG_SCALE))
    atomic.write_text(paths[2], vlc.vegalite_to_html(spec, vl_version=VL_VERSION, bundle=True))
    return paths


def parse_widths(text: str) -> list[int]:
    try:
        widths = [int(w) for w in text.split(",") if w.strip()]
    except ValueError:
        raise ConfigError(
            "--widths", f"{text!r} is not a comma-separated list of integers; allowed: e.g. 64,128,256,512"
        ) from None
    if len(widths) < 2 or any(w < 1 for w in widths) or widths != sorted(set(widths)):
        raise ConfigError("--widths", f"{text!r}: give at least two increasing positive widths, e.g. 64,128,256,512")
    return widths
