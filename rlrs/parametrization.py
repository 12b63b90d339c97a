"""Parametrizations: the standard one (sp) and muP, as one table of rules.

muP (maximal update parametrization, for MoE as in arXiv 2508.09752; rules in
shared/spec/mup-moe.md) rescales init, learning rate, weight decay and a few
forward multipliers with the width multiplier m = d_model / base_d_model so
that a base model's best lr stays best as the model widens. Every weight has
a role; `MUP` below gives each role, as functions of m and the depth L =
n_layers:

- init k: the init variance is init_scale * k / base_fan_in, where
  base_fan_in = fan_in / m is the weight's fan-in at the base width. So
  k = 1/m is exactly the standard init (init_scale / fan_in), k = 1 keeps the
  base model's variance at every width, and k = 1/(2 L m) is the standard
  init divided by 2 L (the depth scaling of output projections);
- lr: the constant factor on the component's scheduled rate,
  lr_group(t) = lr factor * lr_g(t) (rlrs.schedule gives lr_g(t));
- weight decay: the factor on optim.weight_decay. AdamW decays by
  lr * weight_decay per step, so a weight whose lr is divided by m has its
  decay multiplied by m: the decoupled decay lr * wd stays the base model's
  (microsoft/mup's MuAdam);
- forward: the multiplier on the weight's output (embedding output, attention
  logits, router logits, head logits); none where the row says none.

Under sp every factor is neutral (k = 1/m, lr 1, weight decay 1, no forward
multiplier, attention logits 1/sqrt(d_head)): the model and the optimizer
are exactly those of a run without this module.

Torch-free: `settings` below is anything with the attributes of
rlrs.model.ModelConfig (parametrization, d_model, base_d_model, n_layers,
n_heads, alpha_in, alpha_out, attention_mult, router_parametrization).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

PARAMETRIZATIONS = ("sp", "mup")
ROUTER_PARAMETRIZATIONS = ("sp", "mup")


@dataclass(frozen=True)
class Rule:
    component: str
    init: Callable[[float, int], float] | None  # k(m, L); None: not drawn (norms start at ones)
    lr: Callable[[float], float]  # lr factor(m)
    weight_decay: Callable[[float], float]  # weight-decay factor(m): 1 / lr factor
    forward: Callable[[float, object], float] | None  # multiplier(m, settings); None: none


# Init variance k(m, L), relative to the base model's fan-in.
def base_var(m, L):  # the base model's variance at every width
    return 1.0


def sp_var(m, L):  # the standard init, init_scale / fan_in
    return 1.0 / m


def sp_var_by_depth(m, L):  # the standard init / (2 L): output projections
    return 1.0 / (2 * L * m)


# lr and weight-decay factors: vector-like weights (one dimension grows with
# width) keep the base rate; matrix-like ones (both grow) get lr / m, decay * m.
def one(m):
    return 1.0


def over_m(m):
    return 1.0 / m


def times_m(m):
    return float(m)


# Forward multipliers.
def alpha_in(m, s):  # on the embedding output
    return s.alpha_in


def attention(m, s):  # attention logits scale: mult / d_head (replaces 1 / sqrt(d_head))
    return s.attention_mult / (s.d_model // s.n_heads)


def alpha_out(m, s):  # on the head logits
    return s.alpha_out / m


def output(m, s):  # on the router logits, router: mup
    return 1.0 / m


MUP: dict[str, Rule] = {
    # role                  component    init k           lr      decay    forward
    "embedding_token":    Rule("embedding", base_var,        one,    one,     alpha_in),
    "embedding_position": Rule("embedding", base_var,        one,    one,     alpha_in),
    "attention_qkv":      Rule("attention", sp_var,          over_m, times_m, attention),
    "attention_out":      Rule("attention", sp_var_by_depth, over_m, times_m, None),
    "ffn_in":             Rule("ffn",       sp_var,          over_m, times_m, None),
    "ffn_out":            Rule("ffn",       sp_var_by_depth, over_m, times_m, None),
    "experts_in":         Rule("experts",   sp_var,          over_m, times_m, None),
    "experts_out":        Rule("experts",   sp_var_by_depth, over_m, times_m, None),
    # router: sp is the authors' branch ("simpleP": only the experts are
    # rescaled); router: mup (ROUTER_AS_OUTPUT) treats it as an output weight.
    "router":             Rule("router",    base_var,        one,    one,     None),
    "head":               Rule("head",      base_var,        one,    one,     alpha_out),
    "norm":               Rule("norm",      None,            one,    one,     None),
}  # fmt: skip
ROUTER_AS_OUTPUT = Rule("router", base_var, one, one, output)
ROLES = tuple(MUP)


def width_mult(settings) -> float:
    """m = d_model / base_d_model (1 under sp)."""
    if settings.parametrization == "sp":
        return 1.0
    return settings.d_model / settings.base_d_model


def default_attention_mult(base_d_model: int, n_heads: int) -> float:
    """sqrt(d_head of the base model, heads kept as width grows): muP's
    attention logits mult / d_head then equal sp's 1 / sqrt(d_head) at the
    base width."""
    return math.sqrt(base_d_model / n_heads)


def rule(settings, role: str) -> Rule | None:
    """The muP rule of a weight role; None under sp (every factor neutral)."""
    if role not in MUP:
        raise ValueError(f"unknown weight role {role!r}; allowed: {', '.join(ROLES)}")
    if settings.parametrization == "sp":
        return None
    if role == "router" and settings.router_parametrization == "mup":
        return ROUTER_AS_OUTPUT
    return MUP[role]


def init_factor(settings, role: str) -> float:
    """The init variance relative to the standard init (k * m): multiply
    init_scale by it. Exactly 1.0 under sp."""
    r = rule(settings, role)
    if r is None or r.init is None:
        return 1.0
    m = width_mult(settings)
    return r.init(m, settings.n_layers) * m


def lr_factor(settings, role: str) -> float:
    r = rule(settings, role)
    return 1.0 if r is None else r.lr(width_mult(settings))


def weight_decay_factor(settings, role: str) -> float:
    r = rule(settings, role)
    return 1.0 if r is None else r.weight_decay(width_mult(settings))


def forward_multiplier(settings, role: str) -> float | None:
    """The multiplier on the weight's output; None where none applies (always
    under sp, where attention keeps 1 / sqrt(d_head))."""
    r = rule(settings, role)
    if r is None or r.forward is None:
        return None
    return r.forward(width_mult(settings), settings)


def factors(settings) -> list[dict]:
    """The table as numbers for one model: one row per role (docs, reports)."""
    m = width_mult(settings)
    rows = []
    for role in ROLES:
        r = rule(settings, role)
        rows.append(
            {
                "role": role,
                "component": MUP[role].component,
                "init_k": None if r is None or r.init is None else r.init(m, settings.n_layers),
                "init_vs_sp": init_factor(settings, role),
                "lr": lr_factor(settings, role),
                "weight_decay": weight_decay_factor(settings, role),
                "forward": forward_multiplier(settings, role),
            }
        )
    return rows


@dataclass(frozen=True)
class Group:
    """One optimizer parameter group: a component, or a (component, roles)
    part of one where the muP factors differ within the component."""

    name: str
    component: str
    lr_factor: float
    weight_decay_factor: float
    members: tuple[int, ...]  # indices into the (component, role) list given


def groups(settings, entries: list[tuple[str, str]]) -> list[Group]:
    """Split parameters, given as (component, role) in order, into optimizer
    groups: one per component, more where the lr or weight-decay factor
    differs between roles of a component (named component.role...). Groups
    come in order of first appearance, members in the given order, so under
    sp the groups are the components exactly."""
    keyed: dict[tuple[str, float, float], list[int]] = {}
    roles: dict[tuple[str, float, float], list[str]] = {}
    for i, (comp, role) in enumerate(entries):
        if MUP[role].component != comp:
            raise ValueError(f"weight role {role!r} belongs to component {MUP[role].component!r}, not {comp!r}")
        key = (comp, lr_factor(settings, role), weight_decay_factor(settings, role))
        keyed.setdefault(key, []).append(i)
        if role not in roles.setdefault(key, []):
            roles[key].append(role)
    per_comp: dict[str, int] = {}
    for comp, _, _ in keyed:
        per_comp[comp] = per_comp.get(comp, 0) + 1
    out = []
    for (comp, lr, wd), members in keyed.items():
        name = comp if per_comp[comp] == 1 else f"{comp}.{'+'.join(roles[comp, lr, wd])}"
        out.append(Group(name, comp, lr, wd, tuple(members)))
    return out


def role_of_parameters(model) -> dict[int, str]:
    """id(parameter) -> its weight role, read from the `roles` mapping
    (parameter name -> role) each module owning parameters declares. A
    parameter without one is an error, never a silent default."""
    out: dict[int, str] = {}
    for prefix, module in model.named_modules():
        declared = getattr(module, "roles", {})
        for name, p in module.named_parameters(recurse=False):
            if name not in declared:
                raise ValueError(f"parameter {prefix}.{name} has no weight role: its module declares none")
            if declared[name] not in MUP:
                raise ValueError(
                    f"parameter {prefix}.{name} declares unknown role {declared[name]!r}; allowed: {', '.join(ROLES)}"
                )
            out.setdefault(id(p), declared[name])
    return out
