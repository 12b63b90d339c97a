"""rlrs.study.bracketing: the lr-selection decision, driven to its end on
constructed loss(lr) functions whose optimum is known."""

from __future__ import annotations

import math

import pytest

from rlrs.errors import ConfigError
from rlrs.study.bracketing import log_grid, lr_key, select_lr

SEEDS = [10, 11, 12]


def convex(optimum: float, seed_offsets=(0.0, 0.01, -0.01)):
    """loss(lr, seed): a parabola in log lr with its minimum at `optimum`."""
    return lambda lr, i: 2.0 + 0.1 * math.log(lr / optimum) ** 2 + seed_offsets[i]


def drive(grid, factor, loss, max_extra_points, seeds=SEEDS, diverges=lambda lr: False):
    """Run select_lr to its end: every lr it asks for runs on every seed."""
    results, asked = {}, []
    for _ in range(100):
        step = select_lr(grid, factor, results, seeds, max_extra_points)
        if step["action"] == "done":
            return step, asked
        asked += step["run"]
        for lr in step["run"]:
            results[lr] = {s: (math.inf if diverges(lr) else loss(lr, i)) for i, s in enumerate(seeds)}
    raise AssertionError("select_lr did not finish")


def test_log_grid_is_centred_and_rounded():
    assert log_grid(0.003, 2.0) == [0.0015, 0.003, 0.006]
    assert log_grid(0.01, 2**0.5, 2, 2) == pytest.approx([0.005, 0.01 / 2**0.5, 0.01, 0.01 * 2**0.5, 0.02])
    assert lr_key(0.003 * 0.5) == 0.0015


def test_the_first_grid_runs_first():
    step = select_lr([0.0015, 0.003, 0.006], 2.0, {0.003: {10: 2.0}}, SEEDS, 3)
    assert step["action"] == "run" and step["run"] == [0.0015, 0.006] and step["lr"] is None


def test_an_interior_best_is_done_at_once():
    grid = log_grid(0.003, 2.0)
    step, asked = drive(grid, 2.0, convex(0.003), max_extra_points=3)
    assert asked == grid  # nothing beyond the first grid
    assert step["lr"] == 0.003 and step["bracketed"] and not step["cap_reached"] and step["n_extra"] == 0
    assert step["ranked_on"] == SEEDS
    assert step["mean_loss"][0.003] == pytest.approx(2.0)


def test_a_best_at_the_low_edge_gets_lower_points_until_interior():
    # Optimum at 0.003 / 8: the 2nd extra point below the grid (0.000375) is
    # the optimum, the 3rd (0.0001875) brackets it.
    grid = log_grid(0.003, 2.0)
    step, asked = drive(grid, 2.0, convex(0.003 / 8), max_extra_points=5)
    assert asked[3:] == [0.00075, 0.000375, 0.0001875]
    assert step["lr"] == 0.000375 and step["bracketed"] and not step["cap_reached"]
    assert step["n_extra"] == 3


def test_a_best_at_the_high_edge_gets_higher_points():
    grid = log_grid(0.003, 2.0)
    step, asked = drive(grid, 2.0, convex(0.003 * 4), max_extra_points=5)
    assert asked[3:] == [0.012, 0.024]
    assert step["lr"] == 0.012 and step["bracketed"] and step["n_extra"] == 2


def test_the_cap_marks_the_cell_unbracketed():
    grid = log_grid(0.003, 2.0)
    step, asked = drive(grid, 2.0, convex(1e-6), max_extra_points=2)
    assert asked[3:] == [0.00075, 0.000375]
    assert step["lr"] == 0.000375  # the best point seen, reported as unbracketed
    assert not step["bracketed"] and step["cap_reached"] and step["n_extra"] == 2
    assert "still at the low edge after 2 extra point(s) (cap 2): unbracketed" in step["note"]


def test_no_extra_points_reads_an_existing_sweep():
    # max_extra_points=0 judges a sweep that has already run (e.g. a study
    # from before bracketing): the best at an edge is unbracketed at once.
    results = {0.0015: {10: 2.1}, 0.003: {10: 2.3}, 0.006: {10: 2.5}}
    step = select_lr([0.0015, 0.003, 0.006], 2.0, results, [10], 0)
    assert step["action"] == "done" and step["lr"] == 0.0015
    assert step["cap_reached"] and not step["bracketed"]


def test_a_convex_loss_far_outside_the_grid_ends_interior_after_k_points():
    # sqrt(2) steps, optimum 2^(7/2) = 11.3x above the centre: the best point of
    # the grid walk is 0.01 * sqrt(2)^7, bracketed by the 8th point above it.
    factor = 2**0.5
    grid = log_grid(0.01, factor, 2, 2)
    step, asked = drive(grid, factor, convex(0.01 * factor**7), max_extra_points=10)
    assert step["bracketed"] and not step["cap_reached"]
    assert step["lr"] == pytest.approx(0.01 * factor**7, rel=1e-9)
    assert step["n_extra"] == 6  # points at factor^3 .. factor^8
    assert asked[5:] == pytest.approx([0.01 * factor**k for k in range(3, 9)], rel=1e-9)


def test_a_diverged_run_counts_as_infinite_loss():
    # lr 0.006 has the lowest loss on two seeds and diverges on the third:
    # not a candidate. The best is 0.003, bracketed by the diverged point.
    results = {
        0.0015: {10: 2.3, 11: 2.31, 12: 2.29},
        0.003: {10: 2.2, 11: 2.21, 12: 2.19},
        0.006: {10: 2.0, 11: math.inf, 12: 2.0},
    }
    step = select_lr([0.0015, 0.003, 0.006], 2.0, results, SEEDS, 2)
    assert step["lr"] == 0.003 and step["bracketed"]
    assert step["mean_loss"][0.006] == math.inf
    # nan is divergence too
    results[0.006] = {10: 2.0, 11: math.nan, 12: 2.0}
    assert select_lr([0.0015, 0.003, 0.006], 2.0, results, SEEDS, 2)["lr"] == 0.003


def test_a_grid_that_diverges_everywhere_walks_down():
    grid = log_grid(0.1, 2.0)
    step, asked = drive(grid, 2.0, convex(0.01), max_extra_points=6, diverges=lambda lr: lr > 0.04)
    assert asked[3:] == [0.025, 0.0125, 0.00625]  # ties of inf go to the lowest lr: down
    assert step["lr"] == 0.0125 and step["bracketed"]  # between 0.025 and 0.00625


def test_every_point_diverged_and_capped_chooses_nothing():
    step, asked = drive(log_grid(0.1, 2.0), 2.0, convex(0.01), max_extra_points=1, diverges=lambda lr: True)
    assert asked[3:] == [0.025]  # one point below the grid, then it stops
    assert step["action"] == "done" and step["lr"] is None and step["cap_reached"]
    # A clear end, not an lr to wait for: the cell failed.
    assert step["failed"] and not step["bracketed"]
    assert step["note"] == "every lr diverged, down to 0.025 (1 extra point(s), cap 1)"


def test_a_cell_fails_only_when_no_lr_trained():
    step, _ = drive(log_grid(0.1, 2.0), 2.0, convex(0.01), max_extra_points=6, diverges=lambda lr: lr > 0.04)
    assert not step["failed"] and step["lr"] == 0.0125
    capped, _ = drive(log_grid(0.1, 2.0), 2.0, convex(0.01), max_extra_points=1, diverges=lambda lr: lr > 0.04)
    assert not capped["failed"] and capped["lr"] == 0.025 and capped["cap_reached"]  # unbracketed, not failed
    # Nothing to rank (no seed finished at every lr; failures, not divergence): failed too.
    nothing = select_lr([0.0015, 0.003], 2.0, {0.0015: {10: 2.5}, 0.003: {11: 2.3}}, [10, 11], 2)
    assert nothing["failed"] and nothing["lr"] is None and nothing["action"] == "done"


def test_lrs_are_ranked_on_the_seeds_every_point_has():
    # 0.003 has seed 12 missing (its run failed). On all their seeds 0.003
    # (mean 2.3) would beat 0.006 (mean 2.47, seed 12 a bad draw); on the
    # seeds every point has, {10, 11}, 0.006 is best, at the high edge: the
    # next point above it is asked for.
    results = {0.0015: {10: 2.5, 11: 2.5, 12: 2.5}, 0.003: {10: 2.3, 11: 2.3}, 0.006: {10: 2.2, 11: 2.2, 12: 3.0}}
    step = select_lr([0.0015, 0.003, 0.006], 2.0, results, SEEDS, 1)
    assert step["ranked_on"] == [10, 11] and step["run"] == [0.012]
    assert "ranked on the seed(s) every lr has (10, 11)" in step["note"]


def test_only_selection_seeds_count():
    # Seed 0 is a reported seed: its result at 0.006 must not sway the choice.
    results = {0.0015: {10: 2.5}, 0.003: {10: 2.3}, 0.006: {10: 2.4, 0: 1.0}}
    step = select_lr([0.0015, 0.003, 0.006], 2.0, results, [10], 0)
    assert step["lr"] == 0.003 and step["bracketed"] and step["ranked_on"] == [10]


def test_a_point_whose_runs_all_failed_is_left_out_and_stepped_over():
    results = {0.0015: {10: 2.5}, 0.003: {10: 2.3}, 0.006: {10: 2.2}, 0.012: {}}
    step = select_lr([0.0015, 0.003, 0.006], 2.0, results, [10], 3)
    assert step["run"] == [0.024]  # beyond the failed point, not the failed point again
    assert "lr 0.012: no selection seed finished" in step["note"]


def test_ties_go_to_the_lower_lr():
    results = {0.0015: {10: 2.5}, 0.003: {10: 2.3}, 0.006: {10: 2.3}, 0.012: {10: 2.6}}
    step = select_lr([0.0015, 0.003, 0.006, 0.012], 2.0, results, [10], 0)
    assert step["lr"] == 0.003 and step["bracketed"]


def test_bad_settings_are_refused_by_name():
    with pytest.raises(ConfigError, match="sweeps.lr.bracket.max_extra_points: must be >= 0"):
        select_lr([1.0, 2.0], 2.0, {}, [0], -1)
    with pytest.raises(ConfigError, match="sweeps.lr: the first lr grid needs >= 2 points"):
        select_lr([1.0], 2.0, {}, [0], 1)
    with pytest.raises(ConfigError, match="sweeps.lr.bracket.factor: the grid's step factor must be > 1"):
        log_grid(1.0, 1.0)
