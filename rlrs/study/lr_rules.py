"""The base lr of every (size, arm) of a study: its `lr_rule`.

Every sweep of the study runs at this lr (main, ladder, ablations, scaling),
and its lr grids are centred on it (an unstaged study's `sweeps.lr.factors`,
a staged study's selection grids); stage 2 of a staged study then runs at
stage 1's choice instead. The rules:

- `study` (the default): the arm's lr at that size, as the study file
  resolves it (defaults < size < arm < per_size; the tuned lr where the
  family was tuned);
- `mup`: the base model's lr at every width. A size takes the lr its arm
  has at the size's BASE SIZE: the size of the same family (dense, moe) and
  parametrization at the base width, where several share it the one at the
  same depth. Under muP the base width is `model.base_d_model` (m = 1
  there), so muP's per-group lr factors (rlrs.parametrization) carry the
  base model's tuned lr across widths, as the parametrization intends;
  under sp, which has no base_d_model, the family's narrowest sp width
  (the sp model "tuned small" whose lr is transferred unchanged);
- `joint_moe`: the Joint-MoE rule (arXiv 2502.05172, Eq. 8; fitted on
  E in {1, 8}): lr = exp(8.39 - 0.81 ln N - 0.25 ln E), N the model's
  active non-embedding parameters (rlrs.model.param_counts), E its
  `model.moe.n_experts` (experts before granularity: the expansion), 1 for
  a dense model. The study's own lr is not used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from rlrs.errors import ConfigError

RULES = {
    "study": "the arm's lr at that size, as the study file resolves it (the tuned lr where the family was tuned)",
    "mup": "the arm's lr at the size's base size: same family and parametrization at the base width "
    "(model.base_d_model under mup; the family's narrowest sp width under sp)",
    "joint_moe": "exp(8.39 - 0.81 ln N - 0.25 ln E): N active non-embedding parameters, E = model.moe.n_experts "
    "(1 for dense)",
}
DEFAULT = "study"


def rule_of(study: dict) -> str:
    return study.get("lr_rule", DEFAULT)


def joint_moe_lr(n_active_nonembedding: float, n_experts: float) -> float:
    """exp(8.39 - 0.81 ln N - 0.25 ln E) (arXiv 2502.05172, Eq. 8)."""
    if not n_active_nonembedding > 0 or not n_experts >= 1:
        raise ValueError(f"joint_moe lr: need N > 0 and E >= 1, got N={n_active_nonembedding}, E={n_experts}")
    return math.exp(8.39 - 0.81 * math.log(n_active_nonembedding) - 0.25 * math.log(n_experts))


def joint_moe_inputs(resolved: dict) -> tuple[int, int]:
    """(N, E) of a resolved run config: active non-embedding parameters and
    experts before granularity (1 for a dense model)."""
    from rlrs.model import param_counts  # torch: only studies with this rule pay for the import

    moe = resolved["model"]["moe"]
    return param_counts(resolved["model"])["params_active_nonembedding"], (moe["n_experts"] if moe else 1)


@dataclass(frozen=True)
class Shape:
    """What decides a size's base size (from the resolved (size, arm) cell)."""

    family: str  # dense | moe
    parametrization: str  # sp | mup
    d_model: int
    n_layers: int
    base_d_model: int | None  # mup only


def base_size(size: str, shapes: dict[str, Shape]) -> str:
    """The `mup` rule's base size of `size` among the study's sizes (their
    shapes under one arm): same family and parametrization, at the base
    width (base_d_model under mup, the narrowest width under sp), at the
    same depth where several sizes have the base width."""
    me = shapes[size]
    line = {s: sh for s, sh in shapes.items() if (sh.family, sh.parametrization) == (me.family, me.parametrization)}
    width = me.base_d_model if me.parametrization == "mup" else min(sh.d_model for sh in line.values())
    at = [s for s, sh in line.items() if sh.d_model == width]
    if len(at) > 1:
        at = [s for s in at if shapes[s].n_layers == me.n_layers] or at
    where = f"{me.family} {me.parametrization} sizes"
    if not at:
        have = ", ".join(f"{s} (d_model {sh.d_model})" for s, sh in line.items())
        raise ConfigError(
            "lr_rule",
            f"mup: {size!r} has base_d_model {width}, but none of the {where} is that wide ({have}); "
            "allowed: add the base size, or lr_rule: study",
        )
    if len(at) > 1:
        raise ConfigError(
            "lr_rule",
            f"mup: {size!r} has several base sizes ({', '.join(at)}: {where} of d_model {width}, none at its "
            f"depth {me.n_layers}); allowed: one base size per width and depth, or lr_rule: study",
        )
    return at[0]
