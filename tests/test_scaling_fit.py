"""The scaling-law fitter against published numbers and synthetic laws.

Synthetic points: a published law on a realistic grid, times 1% multiplicative
lognormal noise (seeded), the 10% largest-compute points held out."""

import numpy as np
import pytest
from scipy.special import huber

from rlrs.analysis import scaling as sl
from rlrs.analysis.scaling.fit import _objective
from rlrs.errors import ConfigError

NOISE = 0.01
N_GRID = np.geomspace(1e7, 1e9, 5)


def synthetic(law, params, third=None, values=(), noise=NOISE, seed=0, steps=5):
    """Points of `law` at N in 1e7..1e9 x D in 1e9..1e11 (`steps` log-spaced
    values each) x `values` of input `third`."""
    axes = [np.geomspace(1e7, 1e9, steps), np.geomspace(1e9, 1e11, steps)]
    axes += [np.asarray(values, dtype=float)] if third else []
    grid = [a.ravel() for a in np.meshgrid(*axes, indexing="ij")]
    extra = {third: grid[2]} if third else {}
    exact = law.predict(params, sl.Points(grid[0], grid[1], np.ones(len(grid[0])), **extra))
    loss = exact * np.exp(noise * np.random.default_rng(seed).standard_normal(len(exact)))
    return sl.Points(grid[0], grid[1], loss, **extra)


def assert_recovers(fit, truth):
    """Every true coefficient inside its bootstrap interval, at the level that
    makes the statement about all P of them at once 95% (Bonferroni:
    1 - 0.05/P). Measured over 10 other seeds (100-109, 200 replicates):
    all inside at this level for 10/10 (Chinchilla), 10/10 (joint MoE), 9/10
    (fine-grained); at a marginal 95% 10/10, 9/10, 7/10."""
    level = 1 - 0.05 / len(truth)
    boot = fit.boot_params()
    bands = {k: sl.percentile_interval(boot[k], level) for k in truth}
    outside = {k: (*bands[k], v) for k, v in truth.items() if not bands[k][0] <= v <= bands[k][1]}
    assert not outside, f"true value outside its {level:.4f} interval: {outside}"
    # Held-out RMSE at the noise level (band: 0.5x to 2x sigma), train not below half of it.
    assert 0.5 * NOISE < fit.rmse_heldout < 2.0 * NOISE, fit.rmse_heldout
    assert 0.5 * NOISE < fit.rmse_train < 1.5 * NOISE, fit.rmse_train


# ---------------------------------------------------------------- published numbers

# Table 4 of arXiv 2502.05172 (E: m, mu, n, nu).
TABLE4 = {
    1: (30.364, -0.1817, 53.98, -0.1965),
    8: (21.83, -0.1676, 119.9, -0.2338),
    32: (16.54, -0.1557, 234.7, -0.2652),
}


@pytest.mark.parametrize("e", sorted(TABLE4))
def test_joint_moe_reduction_matches_table4(e):
    """Table 3 -> Table 4. The paper's own Table 4 is not exactly Table 3
    reduced: at E = 1 its m and n imply Eh(1) = 2.083 where Table 3 prints
    E_start = 2.0732 (m 30.399 vs 30.364, n 53.84 vs 53.98), and the exponents
    differ by up to 1.3e-4 (Table 3's rounded gamma, zeta times ln Eh up to 3.4
    allow 1.7e-4). So: m, n within 0.3% and mu, nu within 2e-4; a wrong Eh
    (e.g. Eh = E: m = 35.91 at E = 1) or a sign slip is far outside."""
    form = sl.JOINT_MOE.reduce(sl.PUBLISHED["joint_moe"], e)
    m, mu, n, nu = TABLE4[e]
    assert form.m == pytest.approx(m, rel=3e-3)
    assert form.n == pytest.approx(n, rel=3e-3)
    assert form.mu == pytest.approx(mu, abs=2e-4)
    assert form.nu == pytest.approx(nu, abs=2e-4)


def test_transformed_experts_endpoints():
    assert sl.transformed_experts(1.0, 2.0732, 290.4521) == pytest.approx(2.0732, rel=1e-12)
    assert sl.transformed_experts(1e9, 2.0732, 290.4521) == pytest.approx(290.4521, rel=1e-4)
    assert sl.transformed_experts(8.0, 2.0732, 290.4521) == pytest.approx(8.81237, rel=1e-5)


def test_joint_moe_compute_optimal_at_e1_1e20():
    """N_opt = 1.73e9, D_opt = 9.65e9 at E = 1, F = 1e20 (spec; the paper's
    Table 1 rounds them to 1.7B and 9.7B), closed form and numeric."""
    form = sl.JOINT_MOE.reduce(sl.PUBLISHED["joint_moe"], 1)
    n_opt, d_opt = sl.compute_optimal(form, 1e20)
    assert float(f"{n_opt:.3g}") == 1.73e9 and float(f"{d_opt:.3g}") == 9.65e9
    n_num, d_num = sl.compute_optimal_numeric("joint_moe", sl.PUBLISHED["joint_moe"], 1e20, at=1)
    assert n_num == pytest.approx(n_opt, rel=1e-6) and d_num == pytest.approx(d_opt, rel=1e-6)


@pytest.mark.parametrize("law,at", [("chinchilla", None), ("fine_grained", 4.0), ("joint_moe", 8.0)])
def test_closed_form_frontier_matches_numeric_minimum(law, at):
    """The closed-form allocation and frontier loss equal a numeric minimum of
    the full law over N at fixed C, for every law."""
    p = sl.PUBLISHED[law]
    form = sl.get_law(law).reduce(p, at)
    for c in (1e18, 1e21, 1e24):
        n_opt, d_opt = sl.compute_optimal(form, c)
        n_num, d_num = sl.compute_optimal_numeric(law, p, c, at=at)
        assert n_num == pytest.approx(float(n_opt), rel=1e-5)
        third = {} if at is None else {sl.get_law(law).needs: np.array([at])}
        direct = sl.get_law(law).predict(p, sl.Points(np.array([n_num]), np.array([d_num]), np.ones(1), **third))
        assert float(sl.frontier_loss(form, c)) == pytest.approx(float(direct[0]), rel=1e-9)
        assert float(sl.compute_to_reach(form, sl.frontier_loss(form, c))) == pytest.approx(c, rel=1e-9)


# ---------------------------------------------------------------- the objective


def test_huber_objective_is_summed_not_averaged():
    """Residuals (5e-4, -2e-3, 1e-2) at delta 1e-3: 1.25e-7 + 1.5e-6 + 9.5e-6
    = 1.1125e-5 (the mean would be 3.708e-6), through the fit's objective."""
    r = np.array([5e-4, -2e-3, 1e-2])
    expected = 0.5 * 5e-4**2 + 1e-3 * (2e-3 - 5e-4) + 1e-3 * (1e-2 - 5e-4)
    assert expected == pytest.approx(1.1125e-5, rel=1e-12)
    assert sl.huber_objective(r) == pytest.approx(expected, rel=1e-12)
    p = sl.PUBLISHED["chinchilla"]
    n, d = np.array([1e8, 3e8, 1e9]), np.array([1e10, 3e10, 1e11])
    exact = sl.CHINCHILLA.predict(p, sl.Points(n, d, np.ones(3)))
    points = sl.Points(n, d, exact * np.exp(-r))  # log Lhat - log L = r
    assert sl.objective("chinchilla", p, points) == pytest.approx(expected, rel=1e-9)
    assert sl.objective("chinchilla", p, points, delta=0.1) == pytest.approx(huber(0.1, r).sum(), rel=1e-9)
    # The optimiser's own objective is the same sum.
    feats = sl.CHINCHILLA.features(points).reshape(-1, 5)
    inner, _ = _objective(sl.CHINCHILLA.to_theta(p), feats, np.log(points.loss), 1e-3, np.ones(3))
    assert inner == pytest.approx(expected, rel=1e-9)


def test_gradient_is_analytic_and_right():
    rng = np.random.default_rng(3)
    points = synthetic(sl.JOINT_MOE, sl.PUBLISHED["joint_moe"], "e", (1, 8, 32))
    feats, target = sl.JOINT_MOE.features(points).reshape(-1, 9), np.log(points.loss)
    theta = sl.JOINT_MOE.to_theta(sl.PUBLISHED["joint_moe"]) + 0.01 * rng.standard_normal(9)
    w = np.ones(len(points))
    _, grad = _objective(theta, feats, target, 1e-2, w)
    for j in range(9):
        h = np.zeros(9)
        h[j] = 1e-7
        fd = (
            _objective(theta + h, feats, target, 1e-2, w)[0] - _objective(theta - h, feats, target, 1e-2, w)[0]
        ) / 2e-7
        assert grad[j] == pytest.approx(fd, rel=1e-4, abs=1e-9)


# ---------------------------------------------------------------- fits


@pytest.mark.parametrize("law,third,values", [("chinchilla", None, ()), ("joint_moe", "e", (1, 4, 32))])
def test_noiseless_points_give_back_the_law(law, third, values):
    truth = sl.PUBLISHED[law]
    points = synthetic(sl.get_law(law), truth, third, values, noise=0.0)
    fit = sl.fit_law(law, points, n_starts=5, n_bootstrap=0)
    for k, v in truth.items():
        assert fit.params[k] == pytest.approx(v, rel=1e-3, abs=1e-5), k
    assert fit.rmse_train < 1e-6


def test_chinchilla_recovers_the_replication():
    """A=482, alpha=0.3478, B=2085, beta=0.3658, c=1.82 (the replication's E)
    from 36 noisy points (6 N x 6 D), the 6 largest-compute held out."""
    truth = sl.PUBLISHED["chinchilla"]
    points = synthetic(sl.CHINCHILLA, truth, seed=1, steps=6)
    fit = sl.fit_law("chinchilla", points, holdout=6, n_starts=10, n_bootstrap=200, boot_starts=0, seed=0)
    assert fit.n_points == 30 and fit.held_out.sum() == 6
    assert_recovers(fit, truth)


def test_joint_moe_recovers_table3():
    """150 points (N 1e7..1e9 x D 1e9..1e11 x E in {1,2,4,8,16,32}), 15 held out."""
    truth = sl.PUBLISHED["joint_moe"]
    points = synthetic(sl.JOINT_MOE, truth, "e", (1, 2, 4, 8, 16, 32), seed=2)
    fit = sl.fit_law("joint_moe", points, holdout=15, n_starts=10, n_bootstrap=200, boot_starts=0, seed=0)
    assert_recovers(fit, truth)


def test_fine_grained_recovers_published():
    """125 points (N 1e7..1e9 x D 1e9..1e11 x G in {1,2,4,8,16}), 12 held out."""
    truth = sl.PUBLISHED["fine_grained"]
    points = synthetic(sl.FINE_GRAINED, truth, "g", (1, 2, 4, 8, 16), seed=3)
    fit = sl.fit_law("fine_grained", points, holdout=12, n_starts=10, n_bootstrap=200, boot_starts=0, seed=0)
    assert_recovers(fit, truth)


def test_holdout_is_the_largest_compute_and_not_fitted():
    points = synthetic(sl.CHINCHILLA, sl.PUBLISHED["chinchilla"], seed=4)
    mask = sl.holdout_mask(points, 3)
    assert mask.sum() == 3 and points.compute[mask].min() > points.compute[~mask].max()
    # A corrupted held-out point changes the held-out RMSE, not the fit.
    bad = sl.Points(points.n, points.d, np.where(mask, points.loss * 1.5, points.loss))
    a = sl.fit_law("chinchilla", points, holdout=3, n_starts=3, n_bootstrap=0)
    b = sl.fit_law("chinchilla", bad, holdout=mask, n_starts=3, n_bootstrap=0)
    assert a.params == b.params and b.rmse_heldout > 10 * a.rmse_heldout


def test_select_by_rmse_keeps_a_start_with_lower_train_plus_heldout_rmse():
    points = synthetic(sl.JOINT_MOE, sl.PUBLISHED["joint_moe"], "e", (1, 4, 16), seed=9)
    by_obj = sl.fit_law("joint_moe", points, holdout=8, n_starts=8, n_bootstrap=0)
    by_rmse = sl.fit_law("joint_moe", points, holdout=8, n_starts=8, n_bootstrap=0, select="rmse")
    assert by_obj.objective <= by_rmse.objective
    assert by_rmse.rmse_train + by_rmse.rmse_heldout <= by_obj.rmse_train + by_obj.rmse_heldout
    with pytest.raises(ConfigError, match="select: 'heldout' is not allowed"):
        sl.fit_law("joint_moe", points, select="heldout")


@pytest.mark.slow
def test_full_replication_grid_finds_the_prescreened_optimum():
    """All 4,500 starts of the replication's grid vs the 10 best pre-screened."""
    points = synthetic(sl.CHINCHILLA, sl.PUBLISHED["chinchilla"], seed=1)
    full = sl.fit_law("chinchilla", points, holdout=3, n_bootstrap=0)
    quick = sl.fit_law("chinchilla", points, holdout=3, n_starts=10, n_bootstrap=0)
    assert full.n_starts == 4500 and quick.n_starts == 10
    assert quick.objective == pytest.approx(full.objective, rel=1e-6)
    for k, v in full.params.items():
        assert quick.params[k] == pytest.approx(v, rel=1e-3), k


def test_bootstrap_is_seeded():
    points = synthetic(sl.CHINCHILLA, sl.PUBLISHED["chinchilla"], seed=5)
    a, b, c = (sl.fit_law("chinchilla", points, n_starts=3, n_bootstrap=10, seed=s) for s in (0, 0, 1))
    assert np.array_equal(a.boot, b.boot) and not np.array_equal(a.boot, c.boot)


def test_undefined_replicates_count_beyond_both_ends_of_the_interval():
    reps = np.arange(200.0)
    assert sl.percentile_interval(reps) == pytest.approx((4.975, 194.025))  # numpy's linear percentile
    # 4 of 200 undefined (from the middle): each below the 2.5th percentile and
    # above the 97.5th, so both ends move out by 4 places.
    holes = reps.copy()
    holes[100:104] = [np.nan, np.inf, -np.inf, np.nan]
    assert sl.percentile_interval(holes) == pytest.approx((0.975, 198.025))
    # 5 of 200 (2.5%, the tail's share): the ends land on undefined replicates.
    holes[104] = np.nan
    assert sl.percentile_interval(holes) == (None, None)
    # Per column of an array, each end on its own: NaN where undefined.
    # A replicate at +inf is undefined too: it moves the low end as well.
    lo, hi = sl.percentile_interval(np.column_stack([reps, holes, np.r_[reps[:197], [np.inf] * 3]]))
    assert lo[0] == pytest.approx(4.975) and np.isnan(lo[1]) and lo[2] == pytest.approx(1.975)
    assert hi[0] == pytest.approx(194.025) and np.isnan(hi[1]) and hi[2] == pytest.approx(194.025)


def test_rows_state_the_tables_and_the_parameter_count():
    points = synthetic(sl.JOINT_MOE, sl.PUBLISHED["joint_moe"], "e", (1, 8), seed=6)
    fit = sl.fit_law("joint_moe", points, arm="rlrs", n_kind="active", holdout=5, n_starts=3, n_bootstrap=10)
    rows = fit.rows(budgets=[1e20], at=[1])
    assert {
        "law",
        "arm",
        "parameter",
        "value",
        "ci_low",
        "ci_high",
        "rmse_train",
        "rmse_heldout",
        "n_points",
        "n_kind",
    } == set(rows[0])
    names = [r["parameter"] for r in rows]
    assert names[:11] == ["a", "alpha", "delta", "gamma", "b", "beta", "omega", "zeta", "c", "E_start", "E_max"]
    assert "N_opt@C=1e+20,E=1" in names and "mu@E=1" in names
    assert all(r["n_kind"] == "active" and r["arm"] == "rlrs" and r["n_points"] == 45 for r in rows)
    fixed = rows[names.index("E_start")]
    assert fixed["value"] == 2.0732 and fixed["ci_low"] is None
    pts = fit.point_rows()
    assert len(pts) == 50 and sum(r["held_out"] for r in pts) == 5
    assert pts[0]["tokens_per_param"] == pytest.approx(pts[0]["tokens"] / pts[0]["n_params"])
    assert pts[0]["experts"] in (1.0, 8.0) and pts[0]["granularity"] is None


def test_iso_loss_grid_is_the_law():
    iso = sl.iso_loss("fine_grained", sl.PUBLISHED["fine_grained"], (1e7, 1e9), (1e9, 1e11), num=7, at=8)
    p = sl.PUBLISHED["fine_grained"]
    n, d = iso.n[2], iso.d[5]
    direct = p["c"] + (p["g"] / 8 ** p["gamma"] + p["a"]) / n ** p["alpha"] + p["b"] / d ** p["beta"]
    assert iso.loss.shape == (7, 7) and iso.loss[2, 5] == pytest.approx(direct, rel=1e-12)
    assert len(iso.rows()) == 49


def test_bad_input_is_named():
    with pytest.raises(ConfigError, match="law: unknown law 'kaplan'"):
        sl.get_law("kaplan")
    with pytest.raises(ConfigError, match="points.e"):
        sl.fit_law("joint_moe", sl.Points(N_GRID, N_GRID * 10, np.full(5, 3.0)), n_bootstrap=0)
    with pytest.raises(ConfigError, match="points.loss"):
        sl.Points(N_GRID, N_GRID, np.array([3.0, 3.0, -1.0, 3.0, 3.0]))
    with pytest.raises(ConfigError, match="holdout"):
        sl.holdout_mask(sl.Points(N_GRID, N_GRID, np.ones(5)), 5)


# ---------------------------------------------------------------- compute multiplier

K_TOKENS = 1.3  # the arm is exactly 1.3x as token-efficient: L_arm(N, D) = L_base(N, 1.3 D)


def _token_efficient(params, k):
    # B / (kD)^beta = (B k^-beta) / D^beta
    return params | {"B": params["B"] * k ** -params["beta"]}


def test_multiplier_of_a_token_efficient_arm_is_k_exactly():
    """L_arm(N, D) = L_base(N, kD): along the frontier the arm at compute C
    reaches min_N L_base(N, kC/(6N)) = L_base*(kC), so it reaches the
    baseline's L_base*(C) at C/k: multiplier k at every budget. At a fixed N
    it needs D/k tokens for the baseline's loss at D: again k."""
    base = sl.CHINCHILLA.reduce(sl.PUBLISHED["chinchilla"], None)
    arm = sl.CHINCHILLA.reduce(_token_efficient(sl.PUBLISHED["chinchilla"], K_TOKENS), None)
    budgets = np.geomspace(1e17, 1e25, 9)
    assert sl.multiplier_of(base, arm, budgets) == pytest.approx(np.full(9, K_TOKENS), rel=1e-10)
    assert sl.multiplier_of(base, arm, budgets, fixed_n=1e8) == pytest.approx(np.full(9, K_TOKENS), rel=1e-10)
    assert sl.multiplier_of(base, base, budgets) == pytest.approx(np.ones(9), rel=1e-12)
    # An arm whose floor is above the baseline's loss never reaches it.
    worse = sl.CHINCHILLA.reduce(sl.PUBLISHED["chinchilla"] | {"c": 2.5}, None)
    assert sl.multiplier_of(base, worse, [1e24])[0] == 0.0


def test_compute_multiplier_from_fits():
    truth = sl.PUBLISHED["chinchilla"]
    base_pts = synthetic(sl.CHINCHILLA, truth, seed=7)
    arm_pts = synthetic(sl.CHINCHILLA, _token_efficient(truth, K_TOKENS), seed=8)
    kw = dict(holdout=3, n_starts=10, n_bootstrap=200, boot_starts=0)
    base = sl.fit_law("chinchilla", base_pts, arm="baseline", seed=0, **kw)
    arm = sl.fit_law("chinchilla", arm_pts, arm="rlrs", seed=1, **kw)
    budgets = [1e17, 1e18, 1e19, 1e20, 1e22]
    cm = sl.compute_multiplier(base, arm, budgets)
    assert np.all(cm.ci_low <= K_TOKENS) and np.all(K_TOKENS <= cm.ci_high), (cm.ci_low, cm.ci_high)
    assert np.all(cm.ci_low < cm.multiplier) and np.all(cm.multiplier < cm.ci_high)
    largest = max(base.max_train_compute, arm.max_train_compute)
    assert largest < 1e20  # the held-out points sit above the training range
    assert cm.extrapolated.tolist() == [False, False, False, True, True]
    # At N = 1e8 the tokens C/(6N) leave the fitted 1e9..1e11 below 6e17 and above 6e19.
    at_n = sl.compute_multiplier(base, arm, budgets, fixed_n=1e8)
    assert at_n.extrapolated.tolist() == [True, False, False, True, True]
    assert at_n.ci_low[1] <= K_TOKENS <= at_n.ci_high[1] and at_n.ci_low[2] <= K_TOKENS <= at_n.ci_high[2]
    rows = cm.rows()
    assert rows[0].keys() == {"law", "arm", "n_kind", "compute", "multiplier", "ci_low", "ci_high", "extrapolated"}
    assert rows[-1]["extrapolated"] is True and rows[0]["arm"] == "rlrs"
