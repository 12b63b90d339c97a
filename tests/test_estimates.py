"""rlrs.estimates: paired loss gaps and the seed-joint ladder bootstrap,
against hand computations and constructed cases whose answers are known."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from rlrs.analysis import stats
from rlrs.analysis.estimates import MIN_SEEDS, ladder_speedup, loss_gap

# ---------------------------------------------------------------- loss gap
BASE3 = {0: 2.50, 1: 2.60, 2: 2.45}
ARM3 = {0: 2.40, 1: 2.42, 2: 2.38}


def test_paired_interval_from_three_seeds_is_the_hand_computed_t_interval():
    # Differences baseline - arm: 0.10, 0.18, 0.07.
    # mean = 0.35 / 3 = 0.1166667; deviations -0.0166667, 0.0633333, -0.0466667,
    # sum of squares 0.0064667, sd = sqrt(0.0064667 / 2) = 0.0568624,
    # se = sd / sqrt(3) = 0.0328295; t(0.975, df=2) = 4.303;
    # half width = 4.303 * 0.0328295 = 0.141265 -> [-0.024598, 0.257931].
    r = loss_gap(BASE3, ARM3, reference="baseline lr 0.003, 400 steps")
    assert r["method"] == "paired-t"
    assert (r["n_pairs"], r["n_baseline"], r["n_arm"]) == (3, 3, 3)
    assert r["loss_gap"] == pytest.approx(0.1166667, abs=1e-7)
    assert r["se"] == pytest.approx(0.0328295, abs=1e-7)
    assert r["ci_low"] == pytest.approx(0.1166667 - 4.303 * 0.0328295, abs=2e-5)
    assert r["ci_high"] == pytest.approx(0.1166667 + 4.303 * 0.0328295, abs=2e-5)
    assert r["ci_low"] == pytest.approx(-0.024598, abs=2e-5)
    assert r["ci_high"] == pytest.approx(0.257931, abs=2e-5)
    assert r["reference"] == "baseline lr 0.003, 400 steps"
    assert r["note"] is None


def test_welch_interval_beside_it_is_the_hand_computed_one():
    # baseline 2.50, 2.60, 2.45: mean 2.5166667, var 0.0058333;
    # arm 2.40, 2.42, 2.38: mean 2.40, var 0.0004.
    # se^2 = 0.0058333/3 + 0.0004/3 = 0.0020778, se = 0.0455826;
    # df = se^4 / ((0.0058333/3)^2/2 + (0.0004/3)^2/2) = 2.27305.
    r = loss_gap(BASE3, ARM3)
    se, df = 0.0455826, 2.27305
    assert r["welch_gap"] == pytest.approx(0.1166667, abs=1e-7)
    assert r["welch_df"] == pytest.approx(df, abs=1e-4)
    half = scipy_stats.t.ppf(0.975, df) * se
    assert r["welch_ci_low"] == pytest.approx(0.1166667 - half, abs=1e-5)
    assert r["welch_ci_high"] == pytest.approx(0.1166667 + half, abs=1e-5)


def test_pairing_removes_the_shared_seed_effect():
    # Seed effects of +-0.4 nats shared by both arms; the arm is better by
    # 0.1 +- 0.005. Paired: a tight interval around 0.1; Welch: the seed
    # effects swamp it and its interval includes 0.
    effect = {0: 0.0, 1: 0.3, 2: -0.2, 3: 0.4, 4: -0.4}
    jitter = {0: 0.004, 1: -0.003, 2: 0.001, 3: -0.005, 4: 0.003}
    base = {s: 2.5 + e for s, e in effect.items()}
    arm = {s: 2.4 + e + jitter[s] for s, e in effect.items()}
    r = loss_gap(base, arm)
    assert r["method"] == "paired-t" and r["n_pairs"] == 5
    assert r["loss_gap"] == pytest.approx(0.1, abs=0.001)
    paired_width, welch_width = r["ci_high"] - r["ci_low"], r["welch_ci_high"] - r["welch_ci_low"]
    assert paired_width < 0.02
    assert welch_width > 30 * paired_width
    assert r["ci_low"] > 0 and r["welch_ci_low"] < 0 < r["welch_ci_high"]


def test_unpaired_seeds_are_left_out_of_the_paired_estimate():
    base = dict(BASE3) | {7: 9.0}  # seed 7 ran in the baseline only
    r = loss_gap(base, ARM3)
    assert r["n_pairs"] == 3 and r["n_baseline"] == 4
    assert r["loss_gap"] == pytest.approx(0.1166667, abs=1e-7)  # seed 7 is not in it
    assert "seed(s) 7 in one arm only" in r["note"]
    assert r["welch_gap"] == pytest.approx(np.mean([2.5, 2.6, 2.45, 9.0]) - 2.4)


def test_no_interval_below_three_pairs():
    r = loss_gap({0: 2.5, 1: 2.6}, {0: 2.4, 1: 2.5})
    assert r["loss_gap"] == pytest.approx(0.1)
    assert r["method"] == "point" and r["ci_low"] is None and r["ci_high"] is None
    assert r["welch_ci_low"] is None
    assert "2 paired seed(s) (< 3): no paired interval" in r["note"]


def test_without_any_pair_the_gap_is_unpaired_with_welch():
    r = loss_gap({0: 2.5, 1: 2.6, 2: 2.55}, {3: 2.4, 4: 2.5, 5: 2.45})
    assert r["n_pairs"] == 0 and r["method"] == "welch"
    assert r["loss_gap"] == pytest.approx(0.1)
    assert (r["ci_low"], r["ci_high"]) == (r["welch_ci_low"], r["welch_ci_high"])
    assert "unpaired difference of means" in r["note"]


def test_a_diverged_run_is_refused_not_averaged():
    with pytest.raises(ValueError, match="arm: non-finite loss at seed"):
        loss_gap(BASE3, {0: 2.4, 1: math.inf, 2: 2.3})


# ---------------------------------------------------------------- ladder speedup
LENGTHS = (200, 300, 400, 600, 800)
T = 400


def L(t):
    """The baseline's loss at t steps: a power law."""
    return 2.0 + 5.0 * t**-0.5


def ladder_of(seed_effect: dict[int, float], lengths=LENGTHS, seeds=None) -> dict[int, dict[int, float]]:
    seeds = seed_effect if seeds is None else seeds
    return {t: {s: L(t) + seed_effect[s] for s in seeds} for t in lengths}


EFFECT = {0: 0.0, 1: 0.05, 2: -0.04, 3: 0.08, 4: -0.06}


def test_joint_resampling_cancels_a_seed_effect_shared_by_arm_and_ladder():
    # Every group carries the same per-seed offset: any resample shifts the
    # arm's mean and every length's mean by the same amount, so T* is the
    # same in every resample and the interval has no width. Resampling the
    # groups independently (today's analysis.estimate_speedup) turns the
    # seed effect into noise and gives a wide interval.
    effect = {s: e / 10 for s, e in EFFECT.items()}  # small enough to keep the independent CI inside the ladder
    arm = {s: L(1.4 * T) + e for s, e in effect.items()}
    ladder = ladder_of(effect)
    r = ladder_speedup(arm, T, ladder, stats.ladder_t_star)
    assert r["method"] == "paired-bootstrap" and r["n_pairs"] == 5 and r["n_dropped"] == 0
    assert r["speedup"] == pytest.approx(0.4, abs=0.005)
    assert r["ci_high"] - r["ci_low"] < 1e-9
    assert r["ci_low"] == pytest.approx(r["speedup"], abs=1e-9)

    # The same data resampled group by group (the old analysis did that): a wide interval.
    rng = np.random.default_rng(0)
    groups = [np.array(list(arm.values()))] + [np.array(list(ladder[t].values())) for t in LENGTHS]
    means = [g[rng.integers(0, len(g), size=(2000, len(g)))].mean(axis=1) for g in groups]
    independent = stats.ladder_t_star(np.array(LENGTHS, float), np.stack(means[1:], axis=1), means[0]) / T - 1
    low, high = np.quantile(independent[np.isfinite(independent)], [0.025, 0.975])
    assert high - low > 0.05


def test_point_estimate_is_the_crossing_of_the_mean_curves():
    noise = {0: 0.01, 1: -0.02, 2: 0.015}
    arm = {s: L(1.2 * T) + 0.5 * n for s, n in noise.items()}
    ladder = {t: {s: L(t) + n * (1 + t / 1000) for s, n in noise.items()} for t in LENGTHS}
    r = ladder_speedup(arm, T, ladder, stats.ladder_t_star)
    means = np.array([[np.mean(list(ladder[t].values())) for t in LENGTHS]])
    t_star = stats.ladder_t_star(np.array(LENGTHS, float), means, np.array([np.mean(list(arm.values()))]))[0]
    assert r["t_star"] == pytest.approx(t_star, rel=1e-12)
    assert r["speedup"] == pytest.approx(t_star / T - 1, rel=1e-12)
    assert r["saved"] == pytest.approx(1 - T / t_star, rel=1e-12)
    assert r["ci_low"] < r["speedup"] < r["ci_high"]
    assert r["saved_ci_low"] == pytest.approx(1 - 1 / (1 + r["ci_low"]))


def test_never_extrapolates_beyond_the_ladder():
    # The arm beats the longest baseline length: a bound, no number, no CI ends.
    arm = {s: L(1000) + e for s, e in list(EFFECT.items())[:3]}
    r = ladder_speedup(arm, T, ladder_of(EFFECT, seeds=[0, 1, 2]), stats.ladder_t_star)
    assert r["speedup"] is None and r["t_star"] is None and r["saved"] is None
    assert r["bound"] == "> 1.00" and r["bound_value"] == pytest.approx(1.0)
    assert r["ci_low"] is None and r["ci_high"] is None
    assert "no extrapolation" in r["note"]
    # Worse than the shortest length: a lower bound.
    worse = ladder_speedup({s: L(150) for s in range(3)}, T, ladder_of(EFFECT, seeds=[0, 1, 2]), stats.ladder_t_star)
    assert worse["bound"] == "< -0.50" and worse["speedup"] is None


def test_a_ci_end_beyond_the_ladder_is_none():
    # Arm just inside the longest length with seed noise of its own: some
    # resamples land beyond the ladder, so the upper CI end is a bound.
    noise = {0: -0.01, 1: 0.012, 2: -0.006, 3: 0.009}
    arm = {s: L(760) + n for s, n in noise.items()}
    ladder = {t: {s: L(t) for s in noise} for t in LENGTHS}
    r = ladder_speedup(arm, T, ladder, stats.ladder_t_star)
    assert r["speedup"] is not None and 0.8 < r["speedup"] < 1.0
    assert r["ci_low"] is not None and r["ci_high"] is None
    assert "upper CI end outside the ladder (> 1.00)" in r["note"]


def test_ladder_with_fewer_seeds_pairs_on_the_seeds_it_has():
    # Arm on 5 reported seeds, ladder lengths on 3 of them: the union of
    # seeds is resampled; resamples drawing none of the ladder's seeds drop.
    arm = {s: L(1.3 * T) + e for s, e in EFFECT.items()}
    ladder = ladder_of(EFFECT, seeds=[0, 1, 2])
    r = ladder_speedup(arm, T, ladder, stats.ladder_t_star, n_resamples=4000)
    assert (r["n_pairs"], r["n_seeds"], r["baseline_seeds"]) == (3, 5, 3)
    assert r["method"] == "paired-bootstrap"
    # P(no seed of {0, 1, 2} in 5 draws from 5) = 0.4^5 = 1.0%: ~41 of 4000.
    assert 15 < r["n_dropped"] < 80
    assert r["ci_low"] < r["speedup"] < r["ci_high"]


def test_no_interval_below_three_seeds_per_group():
    arm = {s: L(1.2 * T) + e for s, e in EFFECT.items()}
    ladder = ladder_of(EFFECT, seeds=[0, 1, 2]) | {600: {0: L(600)}}  # one length with one seed
    r = ladder_speedup(arm, T, ladder, stats.ladder_t_star)
    assert r["method"] == "point" and r["ci_low"] is None and r["ci_high"] is None
    assert r["speedup"] is not None
    assert f"fewest seeds in a group 1 (< {MIN_SEEDS}): no interval" in r["note"]


def test_a_single_length_is_no_ladder():
    r = ladder_speedup({0: 2.2}, T, {400: {0: 2.3}}, stats.ladder_t_star)
    assert r["speedup"] is None and r["bound"] is None and r["baseline_lengths"] == 1
    assert "needs the arm's runs and baseline runs at >= 2 ladder lengths" in r["note"]


def test_bootstrap_is_reproducible_and_its_size_a_parameter():
    noise = {0: 0.01, 1: -0.02, 2: 0.015, 3: 0.0}
    arm = {s: L(1.2 * T) + n for s, n in noise.items()}
    ladder = {t: {s: L(t) + 0.5 * n for s, n in noise.items()} for t in LENGTHS}
    a = ladder_speedup(arm, T, ladder, stats.ladder_t_star, n_resamples=500)
    b = ladder_speedup(arm, T, ladder, stats.ladder_t_star, n_resamples=500)
    c = ladder_speedup(arm, T, ladder, stats.ladder_t_star, n_resamples=500, seed=1)
    assert (a["ci_low"], a["ci_high"]) == (b["ci_low"], b["ci_high"])
    assert (a["ci_low"], a["ci_high"]) != (c["ci_low"], c["ci_high"])
    assert a["n_resamples"] == 500
