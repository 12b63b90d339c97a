"""What a search may change in a run config, and how each name is addressed.

A tunable is a global (`lr`, `init_scale`, `final_lr_fraction`,
`weight_decay`, each at a fixed place in the run config) or one end of a
component's multiplier (`<component>.start`, `<component>.end`). The search
space `global` holds the globals; `relative` adds every scheduled component
the model has (norm is always (1, 1)).
"""

from __future__ import annotations

import copy

from rlrs.components import SCHEDULED

# Global settings and where each lives in a run config.
GLOBALS = {
    "lr": ("optim", "lr"),
    "init_scale": ("model", "init_scale"),
    "final_lr_fraction": ("schedule", "final_lr_fraction"),
    "weight_decay": ("optim", "weight_decay"),
}


SPACES = ("global", "relative")


# Candidate values are rounded to this many significant digits, so a value
# reached along two paths (x3/2 then x2/3) is the same number, hence the same run id.
SIGNIFICANT = 6

# Every name a study's `tune.parameters` may list.
PARAMETERS = tuple(GLOBALS) + tuple(f"{c}.{w}" for c in SCHEDULED for w in ("start", "end"))


def rounded(x: float) -> float:
    return float(f"{x:.{SIGNIFICANT}g}")


def components_of(resolved: dict) -> list[str]:
    """The components with a relative rate in this model (norm is always (1, 1))."""
    return [c for c in resolved["schedule"]["multipliers"] if c != "norm"]


def space_parameters(resolved: dict, space: str) -> list[str]:
    """Every parameter of a search space, in a fixed order."""
    names = list(GLOBALS)
    if space == "relative":
        names += [f"{c}.{which}" for c in components_of(resolved) for which in ("start", "end")]
    return names


def settings_of(resolved: dict, names: list[str]) -> dict[str, float]:
    """The current value of each named parameter in a resolved run config."""
    out = {}
    for name in names:
        if name in GLOBALS:
            block, key = GLOBALS[name]
            out[name] = float(resolved[block][key])
        else:
            comp, which = name.split(".")
            out[name] = float(resolved["schedule"]["multipliers"][comp][which])
    return out


def apply_settings(raw: dict, settings: dict[str, float]) -> dict:
    """A copy of a raw run config with the given parameters set. A component
    missing from the raw table starts at (1, 1)."""
    raw = copy.deepcopy(raw)
    for name, value in settings.items():
        if name in GLOBALS:
            block, key = GLOBALS[name]
            raw.setdefault(block, {})[key] = value
        else:
            comp, which = name.split(".")
            table = raw.setdefault("schedule", {}).setdefault("multipliers", {})
            table.setdefault(comp, {"start": 1.0, "end": 1.0})[which] = value
    return raw
