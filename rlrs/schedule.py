"""Learning-rate schedules: pure functions of the step, no torch.

The relative schedule of the RLRS paper (spec section 2). Every component g has
a start multiplier s_g and an end multiplier e_g on one base schedule:

    start_g = lr * s_g
    end_g   = lr * f * e_g        (e_g scales the GLOBAL end rate lr * f)
    t <  W:      start_g * (t + 1) / W
    W <= t < T:  end_g + (start_g - end_g) * (1 + cos(pi * (t - W) / (T - W))) / 2
    t >= T:      end_g

The baseline is s_g = e_g = 1 for every component. Step t (0-based) is trained
with lr_at(..., t). Two more shapes users ask for share the warmup and the
per-component start and end rates:

- constant: start_g after warmup (the end multiplier is unused);
- wsd (warmup-stable-decay): start_g until the last `decay_fraction` of the
  steps, then linear decay reaching end_g at the last step.
"""

from __future__ import annotations

import math

import numpy as np

SHAPES = ("cosine", "constant", "wsd")


def lr_at(
    shape: str,
    lr: float,
    final_lr_fraction: float,
    warmup_steps: int,
    steps: int,
    start: float,
    end: float,
    t: int,
    decay_fraction: float = 0.2,
) -> float:
    """The learning rate of one component at step t (0-based)."""
    peak = lr * start
    floor = lr * final_lr_fraction * end
    if t < warmup_steps:
        return peak * (t + 1) / warmup_steps
    if t >= steps:
        return floor if shape != "constant" else peak
    if shape == "cosine":
        progress = (t - warmup_steps) / (steps - warmup_steps)
        return floor + (peak - floor) * (1.0 + math.cos(math.pi * progress)) / 2.0
    if shape == "constant":
        return peak
    if shape == "wsd":
        decay_steps = decay_start_and_length(warmup_steps, steps, decay_fraction)[1]
        decay_start = steps - decay_steps
        if t < decay_start:
            return peak
        # Linear from peak at the first decay step to floor at the last step.
        if decay_steps == 1:
            return floor
        return peak + (floor - peak) * (t - decay_start) / (decay_steps - 1)
    raise ValueError(f"unknown schedule shape {shape!r}; allowed: {', '.join(SHAPES)}")


def decay_start_and_length(warmup_steps: int, steps: int, decay_fraction: float) -> tuple[int, int]:
    """For wsd: the decay phase covers round(decay_fraction * steps) steps, at
    least one, and never eats into the warmup."""
    decay_steps = max(1, round(decay_fraction * steps))
    decay_steps = min(decay_steps, steps - warmup_steps)
    return steps - decay_steps, decay_steps


def component_table(schedule: dict, lr: float, steps: int, components: list[str]) -> np.ndarray:
    """The whole run's rates at once: array [steps, len(components)].

    Computed once before training so the step loop only indexes a table.
    `schedule` is the resolved `schedule` block of a run config.
    """
    out = np.empty((steps, len(components)), dtype=np.float64)
    mult = schedule["multipliers"]
    for j, name in enumerate(components):
        m = mult.get(name, {"start": 1.0, "end": 1.0})
        for t in range(steps):
            out[t, j] = lr_at(
                schedule["shape"],
                lr,
                schedule["final_lr_fraction"],
                schedule["warmup_steps"],
                steps,
                m["start"],
                m["end"],
                t,
                schedule.get("decay_fraction", 0.2),
            )
    return out
