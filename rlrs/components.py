"""Model components: which RLRS component every parameter belongs to.

A parameter's component is the `component` declared by the nearest module
that owns it (the module itself or an ancestor), so the grouping follows each
module's role in the network. A parameter with no declaring module is an
error, never a silent default: the components must partition the model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch-free at import: config validation uses COMPONENTS
    import torch.nn as nn

COMPONENTS = ("embedding", "attention", "ffn", "router", "experts", "head", "norm")
# Components a relative schedule may scale; norm always runs at (1, 1).
SCHEDULED = tuple(c for c in COMPONENTS if c != "norm")


def component_of_parameters(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """component -> its parameters, in COMPONENTS order, omitting empty ones."""
    groups: dict[str, list[nn.Parameter]] = {c: [] for c in COMPONENTS}
    seen: set[int] = set()

    def visit(module: nn.Module, prefix: str, inherited: str | None) -> None:
        comp = getattr(module, "component", inherited)
        if comp is not None and comp not in groups:
            raise ValueError(f"module {prefix or '<root>'} declares unknown component {comp!r}")
        for name, p in module.named_parameters(recurse=False):
            if comp is None:
                raise ValueError(f"parameter {prefix}{name} has no component: its module declares none")
            if id(p) not in seen:  # a shared (tied) tensor is counted once
                seen.add(id(p))
                groups[comp].append(p)
        for name, child in module.named_children():
            visit(child, f"{prefix}{name}.", comp)

    visit(model, "", None)
    return {c: ps for c, ps in groups.items() if ps}


def named_components(model: nn.Module) -> dict[str, str]:
    """parameter name -> component (for tests and debugging)."""
    by_id = {id(p): comp for comp, ps in component_of_parameters(model).items() for p in ps}
    return {name: by_id[id(p)] for name, p in model.named_parameters()}
