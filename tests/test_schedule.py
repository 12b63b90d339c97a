"""Exact values of the schedules (spec section 2)."""

import math

import numpy as np
import pytest

from rlrs.schedule import component_table, lr_at

# lr 1, final fraction 0.1, warmup 2, 10 steps, start 2, end 0.5:
# start_g = 2, end_g = 1 * 0.1 * 0.5 = 0.05.
ARGS = dict(lr=1.0, final_lr_fraction=0.1, warmup_steps=2, steps=10, start=2.0, end=0.5)


@pytest.mark.parametrize(
    "t, expected",
    [
        (0, 1.0),  # warmup: 2 * (0 + 1) / 2
        (1, 2.0),  # warmup reaches the peak at t = W - 1
        (2, 2.0),  # cosine starts at the peak
        (6, 0.05 + 1.95 * 0.5),  # halfway through the cosine
        (9, 0.05 + 1.95 * (1 + math.cos(math.pi * 7 / 8)) / 2),
        (10, 0.05),  # the floor from T on
        (25, 0.05),
    ],
)
def test_cosine_values(t, expected):
    assert lr_at("cosine", t=t, **ARGS) == pytest.approx(expected, rel=1e-12)


def test_end_multiplier_scales_the_global_floor_not_the_component_peak():
    # e_g multiplies lr * f, so the decay ratio is f * e / s.
    floor = lr_at("cosine", 3e-3, 0.0444, 10, 1000, 0.3, 1.125, 1000)
    assert floor == pytest.approx(3e-3 * 0.0444 * 1.125)
    peak = lr_at("cosine", 3e-3, 0.0444, 10, 1000, 0.3, 1.125, 10)
    assert peak == pytest.approx(3e-3 * 0.3)


def test_baseline_is_all_ones_and_no_warmup_starts_at_peak():
    assert lr_at("cosine", 1.0, 0.1, 0, 4, 1.0, 1.0, 0) == 1.0
    assert lr_at("cosine", 1.0, 0.1, 0, 4, 1.0, 1.0, 2) == pytest.approx(0.1 + 0.9 * 0.5)


def test_constant_and_wsd():
    assert [lr_at("constant", t=t, **ARGS) for t in (0, 1, 5, 9)] == [1.0, 2.0, 2.0, 2.0]
    # wsd: 10 steps, decay over the last 2 (0.2 * 10): t=8 is the peak, t=9 the floor.
    vals = [lr_at("wsd", t=t, decay_fraction=0.2, **ARGS) for t in range(10)]
    assert vals[:2] == [1.0, 2.0]
    assert vals[2:9] == [2.0] * 7
    assert vals[9] == pytest.approx(0.05)
    vals = [lr_at("wsd", t=t, decay_fraction=0.4, **ARGS) for t in range(10)]
    assert vals[6:] == pytest.approx([2.0, 2.0 - 1.95 / 3, 2.0 - 2 * 1.95 / 3, 0.05])


def test_component_table_matches_formula_per_component():
    sched = {
        "shape": "cosine",
        "final_lr_fraction": 0.1,
        "warmup_steps": 2,
        "multipliers": {"embedding": {"start": 5.0, "end": 0.666}, "head": {"start": 0.666, "end": 0.444}},
    }
    table = component_table(sched, 0.01, 20, ["embedding", "head", "norm"])
    assert table.shape == (20, 3)
    for t in range(20):
        assert table[t, 0] == lr_at("cosine", 0.01, 0.1, 2, 20, 5.0, 0.666, t)
        assert table[t, 1] == lr_at("cosine", 0.01, 0.1, 2, 20, 0.666, 0.444, t)
        assert table[t, 2] == lr_at("cosine", 0.01, 0.1, 2, 20, 1.0, 1.0, t)
    assert np.all(table > 0)
