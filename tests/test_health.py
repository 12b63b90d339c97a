"""rlrs.health: each of the eight checks of the protocol (spec section 3)
flags a constructed study where its condition holds and passes one where
it does not. Synthetic run-level frames in the RUNS / CURVES contracts."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from rlrs.analysis import health, health_checks, health_view, plateau, scaling_lr
from rlrs.errors import ConfigError

S = health.settings()
RUN_SCHEMA = {
    "run_id": pl.Utf8,
    "size": pl.Utf8,
    "family": pl.Utf8,
    "arm": pl.Utf8,
    "sweep": pl.Utf8,
    "seed": pl.Int64,
    "steps": pl.Int64,
    "lr": pl.Float64,
    "final_eval_loss": pl.Float64,
    "params_active_nonembedding": pl.Int64,
    "tokens": pl.Int64,
    "dropped_frac_last": pl.Float64,
}
PARAMS = {"s": 100_000, "m": 1_000_000, "moe-s": 101_000, "moe-m": 1_010_000}


def run(size, arm, seed, loss, *, sweep="main", steps=400, family=None, tokens=None, dropped=None, lr=0.003):
    family = family or ("moe" if size.startswith("moe") else "dense")
    return {
        "run_id": f"{size}/{arm}/{sweep}/{steps}/{seed}",
        "size": size,
        "family": family,
        "arm": arm,
        "sweep": sweep,
        "seed": seed,
        "steps": steps,
        "lr": lr,
        "final_eval_loss": loss,
        "params_active_nonembedding": PARAMS[size],
        "tokens": tokens or steps * 16 * 128,
        "dropped_frac_last": dropped,
    }


def runs(rows) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=RUN_SCHEMA, orient="row")


def cell(size, arm, losses, **kw):
    """One compared cell: seed i gets losses[i]."""
    return [run(size, arm, seed, loss, **kw) for seed, loss in enumerate(losses)]


def only(rows, check, **match):
    got = [r for r in rows if r["check_name"] == check and all(r[k] == v for k, v in match.items())]
    assert len(got) == 1, got
    return got[0]


# ---------------------------------------------------------------- check 1
def test_loss_rising_with_size_fails_and_falling_passes():
    rows = health_checks.loss_falls_with_size(
        runs(
            cell("s", "baseline", [2.40, 2.41, 2.39])
            + cell("m", "baseline", [2.45, 2.46, 2.44])
            + cell("s", "rlrs", [2.40, 2.41, 2.39])
            + cell("m", "rlrs", [2.20, 2.21, 2.19])
        ),
        S,
    )
    bad = only(rows, "loss_falls_with_size", arm="baseline")
    assert bad["status"] == "fail" and bad["size"] == "m" and bad["scope"] == "arm"
    assert bad["value"] == pytest.approx(0.05) and bad["threshold"] == 0.0
    assert "loss rises with size (baseline at m: 2.450 vs 2.400 at s, +0.050 nats)" in bad["message"]
    good = only(rows, "loss_falls_with_size", arm="rlrs")
    assert good["status"] == "pass" and good["value"] == pytest.approx(-0.2)


def test_loss_falling_by_less_than_seed_noise_warns():
    # Means 2.40 -> 2.39 with seed sd 0.05: 0.01 < 2 SE (0.082).
    rows = health_checks.loss_falls_with_size(
        runs(cell("s", "baseline", [2.35, 2.40, 2.45]) + cell("m", "baseline", [2.34, 2.39, 2.44])), S
    )
    r = only(rows, "loss_falls_with_size")
    assert r["status"] == "warn" and "by less than seed noise" in r["message"]


def test_sizes_are_compared_per_family_and_at_equal_length():
    # A dense and an MoE size never meet; a larger size trained shorter is not comparable.
    rows = health_checks.loss_falls_with_size(
        runs(
            cell("s", "baseline", [2.0, 2.0, 2.0])
            + cell("moe-m", "baseline", [2.5, 2.5, 2.5])
            + cell("m", "baseline", [2.3, 2.3, 2.3], steps=200)
        ),
        S,
    )
    assert [r["size"] for r in rows] == ["m"]
    assert rows[0]["status"] == "warn" and "not comparable at equal length" in rows[0]["message"]


# ---------------------------------------------------------------- check 2
def test_an_unbracketed_lr_fails_and_a_bracketed_one_passes():
    choices = pl.DataFrame(
        [
            {"size": "m", "family": "dense", "arm": "rlrs", "lr": 0.0015, "bracketed": False, "cap_reached": True},
            {"size": "m", "family": "dense", "arm": "baseline", "lr": 0.003, "bracketed": True, "cap_reached": False},
            {"size": "l", "family": "dense", "arm": "rlrs", "lr": None, "bracketed": False, "cap_reached": True},
        ]
    )
    rows = health_checks.lr_bracketed(choices)
    bad, good = only(rows, "lr_bracketed", size="m", arm="rlrs"), only(rows, "lr_bracketed", arm="baseline")
    assert (
        bad["status"] == "fail" and "lr 0.0015 is at the edge of its sweep after the bracketing cap" in bad["message"]
    )
    assert good["status"] == "pass" and good["value"] == 0.003
    none = only(rows, "lr_bracketed", size="l")
    assert none["status"] == "fail" and "no lr chosen" in none["message"]


# ---------------------------------------------------------------- check 3
def test_a_speedup_that_is_only_a_bound_fails():
    sp = pl.DataFrame(
        [
            {"size": "s", "family": "dense", "arm": "rlrs", "speedup": 0.3, "bound": None},
            {"size": "m", "family": "dense", "arm": "rlrs", "speedup": None, "bound": "> 1.00"},
            {"size": "l", "family": "dense", "arm": "rlrs", "speedup": None, "bound": None},
        ]
    )
    rows = health_checks.ladder_brackets_arm(sp)
    assert only(rows, "ladder_brackets_arm", size="s")["status"] == "pass"
    bound = only(rows, "ladder_brackets_arm", size="m")
    assert bound["status"] == "fail" and "only a bound (> 1.00)" in bound["message"]
    assert only(rows, "ladder_brackets_arm", size="l")["status"] == "fail"


# ---------------------------------------------------------------- check 4
def test_few_tokens_per_parameter_warn():
    rows = health_checks.tokens_per_param(
        runs(cell("s", "baseline", [2.0], tokens=500_000) + cell("m", "baseline", [2.0], tokens=20_000_000)), S
    )
    low, ok = only(rows, "tokens_per_param", size="s"), only(rows, "tokens_per_param", size="m")
    assert low["status"] == "warn" and low["value"] == pytest.approx(5.0) and low["threshold"] == 10.0
    assert low["scope"] == "size" and low["arm"] is None
    assert ok["status"] == "pass" and ok["value"] == pytest.approx(20.0)


# ---------------------------------------------------------------- check 5
STEPS = 400


def curve_rows(run_id, loss_of_t, every=25):
    """Eval points after steps every-1, 2*every-1, ... (0-based step index)."""
    return [{"run_id": run_id, "step": t - 1, "eval_loss": loss_of_t(t)} for t in range(every, STEPS + 1, every)]


def power_law(t):
    return 2.0 + 5.0 * t**-0.5


def late_exit(centre):
    # A fast early drop to a 2.5-nat plateau, left by a 0.6-nat drop around `centre`.
    return lambda t: 2.5 + 1.5 * math.exp(-t / 10) - 0.6 / (1 + math.exp(-(t - centre) / 20))


def plateau_rows(loss_of_t, every=25):
    r = runs(cell("s", "baseline", [2.0, 2.0]))
    curves = pl.DataFrame([c for rid in r["run_id"] for c in curve_rows(rid, loss_of_t, every)])
    rows = plateau.plateau(r, curves, S)
    return only(rows, "plateau_exit"), only(rows, "end_slope")


def test_a_power_law_curve_is_past_its_plateau_and_not_steep_at_the_end():
    exit_, end = plateau_rows(power_law)
    assert exit_["status"] == "pass" and exit_["value"] == 0.0
    assert end["status"] == "pass"
    # (L(360) - L(400)) / L(400) on the linear pieces between evals at 350, 375, 400
    l360 = power_law(350) + (power_law(375) - power_law(350)) * 10 / 25
    assert end["value"] == pytest.approx((l360 - power_law(400)) / power_law(400), rel=1e-9)


def test_a_run_leaving_its_plateau_after_a_quarter_of_training_warns():
    exit_, end = plateau_rows(late_exit(240))
    assert exit_["status"] == "warn" and exit_["value"] == 1.0
    # No eval point by 5% (the first is at 6.25%): the spec's test cannot run, the shape test does.
    assert "2 of 2 run(s) still on the early plateau after 25% of training" in exit_["message"]
    assert "drops faster after 25% than before" in exit_["message"]
    assert end["status"] == "pass"  # the exit is over by the end


def test_a_run_leaving_its_plateau_early_passes():
    exit_, _ = plateau_rows(late_exit(30))
    assert exit_["status"] == "pass"


def test_a_run_still_dropping_steeply_at_the_end_warns():
    _, end = plateau_rows(late_exit(380))
    assert end["status"] == "warn" and end["value"] > S["end_drop"]
    assert "still dropping steeply" in end["message"]


def sharp_exit(centre):
    # The plateau reached within 3% of training (time constant 3 steps), left around `centre`.
    return lambda t: 2.5 + 1.5 * math.exp(-t / 3) - 0.6 / (1 + math.exp(-(t - centre) / 20))


def test_the_spec_test_flags_a_run_on_its_plateau_at_a_quarter_and_passes_an_early_exit():
    # Eval points every 20 steps: at 5% (step 20) and 25% (step 100) of 400.
    exit_, _ = plateau_rows(sharp_exit(240), every=20)
    assert exit_["status"] == "warn" and exit_["value"] == 1.0
    assert (
        f"loss at 25% {sharp_exit(240)(100):.3f} not below its 5% level {sharp_exit(240)(20):.3f}" in exit_["message"]
    )
    exit_, _ = plateau_rows(sharp_exit(40), every=20)
    assert exit_["status"] == "pass"


def never_left(t):
    # Barely declining: the shape test's drops per doubling (0.0015, 0.003, 0.006 nats) stay under plateau_min_drop.
    return 2.55 - 0.00003 * t


def test_a_run_that_never_leaves_its_plateau_is_flagged_though_the_shape_test_passes_it():
    r = runs(cell("s", "baseline", [never_left(400)] * 2))
    curves = pl.DataFrame([c for rid in r["run_id"] for c in curve_rows(rid, never_left)])
    # The fallback alone passes it: that was the hole.
    x, y = curves.filter(pl.col("run_id") == r["run_id"][0]).sort("step").select("step", "eval_loss")
    assert plateau.shape_test(x.to_numpy() + 1.0, y.to_numpy(), STEPS, S)[0] is False
    exit_ = only(plateau.plateau(r, curves, S), "plateau_exit")
    # The size's level: the median of its runs' mean eval loss at 5-10% of training (the point at step 25).
    level = never_left(25)
    assert exit_["status"] == "warn" and exit_["value"] == 1.0
    assert (
        f"final loss {never_left(400):.3f} not 0.05 nats below its size's plateau level {level:.3f}" in exit_["message"]
    )
    # A run that does leave it (final loss well below the level) passes.
    left = runs(cell("s", "baseline", [never_left(400) - 0.3] * 2))
    assert only(plateau.plateau(left, curves, S), "plateau_exit")["status"] == "pass"


def left_high(t):
    # A small model's high early plateau (2.55 at step 25), left convexly to 2.475.
    return 2.45 + 0.1 * (25 / t) ** 0.5


def stuck_low(t):
    # A larger model's lower plateau (2.0), never left (drops per doubling under plateau_min_drop).
    return 2.0 - 0.00003 * t


def test_the_never_left_level_is_each_sizes_own():
    # s left its plateau (0.075 nats below its own level); m never left its (lower) one.
    # A study-wide level (the median over both sizes, ~2.27) flags s and passes m: both wrong.
    r = runs(cell("s", "baseline", [left_high(400)] * 2) + cell("m", "baseline", [stuck_low(400)] * 2))
    shapes = {"s": left_high, "m": stuck_low}
    curves = pl.DataFrame(
        [c for rid, size in r.select("run_id", "size").iter_rows() for c in curve_rows(rid, shapes[size])]
    )
    rows = plateau.plateau(r, curves, S)
    small, large = only(rows, "plateau_exit", size="s"), only(rows, "plateau_exit", size="m")
    assert small["status"] == "pass" and small["value"] == 0.0
    assert large["status"] == "warn" and large["value"] == 1.0
    assert (
        f"final loss {stuck_low(400):.3f} not 0.05 nats below its size's plateau level {stuck_low(25):.3f}: "
        "never left it" in large["message"]
    )
    # Pooled over the size's arms: an arm that leaves early does not set its own bar.
    both = runs(cell("m", "baseline", [stuck_low(400)] * 2) + cell("m", "rlrs", [stuck_low(400) - 0.3] * 2))
    pooled = pl.DataFrame([c for rid in both["run_id"] for c in curve_rows(rid, stuck_low)])
    rows = plateau.plateau(both, pooled, S)
    assert only(rows, "plateau_exit", arm="baseline")["status"] == "warn"
    assert only(rows, "plateau_exit", arm="rlrs")["status"] == "pass"


def test_a_curve_too_sparse_to_tell_warns():
    exit_, _ = plateau_rows(power_law, every=400)  # one eval point, at the end
    assert exit_["status"] == "warn" and "too sparse" in exit_["message"]


# ---------------------------------------------------------------- check 6
def test_an_moe_baseline_worse_than_dense_at_equal_active_params_fails():
    base = cell("s", "baseline", [2.00, 2.01, 1.99]) + cell("m", "baseline", [1.80, 1.81, 1.79])
    rows = health_checks.moe_vs_dense(
        runs(base + cell("moe-s", "baseline", [2.40, 2.41, 2.39]) + cell("moe-m", "baseline", [1.78, 1.79, 1.77])), S
    )
    bad = only(rows, "moe_vs_dense", size="moe-s")
    assert bad["status"] == "fail" and bad["value"] == pytest.approx(0.4) and bad["arm"] == "baseline"
    assert "handicapped baseline" in bad["message"] and "dense s" in bad["message"]
    assert only(rows, "moe_vs_dense", size="moe-m")["status"] == "pass"


def test_an_moe_baseline_worse_within_noise_warns_and_unmatched_sizes_are_skipped():
    rows = health_checks.moe_vs_dense(
        runs(
            cell("s", "baseline", [1.95, 2.00, 2.05])
            + cell("moe-s", "baseline", [1.96, 2.01, 2.06])
            + cell("moe-m", "baseline", [3.0, 3.0, 3.0])
        ),
        S,
    )  # no dense of 1M active
    assert [r["size"] for r in rows] == ["moe-s"]
    assert rows[0]["status"] == "warn" and "within seed noise" in rows[0]["message"]


def test_many_dropped_tokens_warn():
    rows = health_checks.dropped_tokens(
        runs(
            cell("moe-s", "baseline", [2.0, 2.0], dropped=0.2)
            + cell("moe-s", "rlrs", [2.0, 2.0], dropped=0.05)
            + cell("s", "baseline", [2.0, 2.0])
        ),
        S,
    )
    assert {r["arm"]: r["status"] for r in rows} == {"baseline": "warn", "rlrs": "pass"}  # no row for dense
    assert only(rows, "dropped_tokens", arm="baseline")["value"] == pytest.approx(0.2)


# ---------------------------------------------------------------- check 7
def test_seeds_per_compared_cell_fail_below_3_and_warn_below_5():
    rows = health_checks.seeds_per_cell(
        runs(cell("s", "baseline", [2.0] * 2) + cell("s", "rlrs", [2.0] * 4) + cell("m", "rlrs", [2.0] * 5)), S
    )
    assert only(rows, "seeds_per_cell", size="s", arm="baseline")["status"] == "fail"
    assert only(rows, "seeds_per_cell", size="s", arm="rlrs")["status"] == "warn"
    assert only(rows, "seeds_per_cell", size="m", arm="rlrs")["status"] == "pass"


def test_ladder_lengths_with_one_seed_fail():
    main = cell("s", "baseline", [2.0] * 5) + cell("m", "baseline", [2.0] * 5)
    ladder = (
        cell("s", "baseline", [2.1], sweep="ladder", steps=200)
        + cell("s", "baseline", [1.9] * 3, sweep="ladder", steps=800)
        + cell("m", "baseline", [2.1] * 3, sweep="ladder", steps=200)
    )
    rows = health_checks.seeds_per_cell(runs(main + ladder), S)
    bad = only(rows, "ladder_seeds", size="s")
    assert bad["status"] == "fail" and "1 (at 200 steps)" in bad["message"] and bad["arm"] == "baseline"
    assert only(rows, "ladder_seeds", size="m")["status"] == "pass"


def test_an_effect_within_seed_noise_warns_cannot_tell():
    rows = health_checks.effect_vs_noise(
        runs(
            cell("s", "baseline", [2.50, 2.60, 2.45])
            + cell("s", "rlrs", [2.40, 2.42, 2.38])  # [-0.025, +0.258]
            + cell("m", "baseline", [2.50, 2.60, 2.45])
            + cell("m", "rlrs", [2.30, 2.41, 2.24])  # gap 0.2 +- 0.01
            + cell("moe-s", "baseline", [2.5, 2.6])
            + cell("moe-s", "rlrs", [2.4, 2.5])
        )
    )
    noisy = only(rows, "effect_vs_noise", size="s")
    assert noisy["status"] == "warn" and "includes 0, cannot tell" in noisy["message"]
    assert noisy["value"] == pytest.approx(0.1166667 / 0.0328295, rel=1e-5)
    assert noisy["threshold"] == pytest.approx(4.302653, rel=1e-5)
    assert only(rows, "effect_vs_noise", size="m")["status"] == "pass"
    few = only(rows, "effect_vs_noise", size="moe-s")
    assert few["status"] == "warn" and "no interval (2 paired seed(s))" in few["message"]


# ---------------------------------------------------------------- check 8
def test_reported_seeds_overlapping_tuning_or_selection_seeds_fail():
    bad = health_checks.seeds_disjoint([0, 1, 2], [10, 11], [0])[0]
    assert bad["status"] == "fail" and bad["scope"] == "study" and bad["value"] == 1
    assert "seed(s) 0 are reported" in bad["message"] and "tuning [0]" in bad["message"]
    assert health_checks.seeds_disjoint([0, 1, 2], [2, 11], [99])[0]["status"] == "fail"
    assert health_checks.seeds_disjoint([0, 1, 2], [10, 11], [99])[0]["status"] == "pass"
    assert health_checks.seeds_disjoint([0, 1, 2], None, [])[0]["status"] == "pass"


# ---------------------------------------------------------------- together
def small_study():
    main = (
        cell("s", "baseline", [2.40, 2.41, 2.39, 2.40, 2.42])
        + cell("m", "baseline", [2.30, 2.31, 2.29, 2.30, 2.32])
        + cell("s", "rlrs", [2.30, 2.31, 2.29, 2.30, 2.33])
        + cell("m", "rlrs", [2.20, 2.21, 2.18, 2.20, 2.22])
    )
    ladder = [
        run(size, "baseline", seed, 2.6 - 0.1 * i, sweep="ladder", steps=t)
        for size in ("s", "m")
        for i, t in enumerate((200, 800))
        for seed in range(3)
    ]
    r = runs(main + ladder)
    curves = pl.DataFrame([c for rid in r["run_id"] for c in curve_rows(rid, power_law)])
    choices = pl.DataFrame(
        [
            {
                "size": sz,
                "family": "dense",
                "arm": a,
                "lr": 0.003,
                "bracketed": not (sz == "m" and a == "baseline"),
                "cap_reached": False,
            }
            for sz in ("s", "m")
            for a in ("baseline", "rlrs")
        ]
    )
    sp = pl.DataFrame(
        [
            {"size": "s", "family": "dense", "arm": "rlrs", "speedup": 0.4, "bound": None},
            {"size": "m", "family": "dense", "arm": "rlrs", "speedup": None, "bound": "> 1.00"},
        ]
    )
    return r, curves, choices, sp


def test_study_health_returns_the_view_contract_in_check_order():
    r, curves, choices, sp = small_study()
    rows = health_view.study_health(
        r,
        curves,
        choices,
        sp,
        seeds=[0, 1, 2, 3, 4],
        selection_seeds=[10, 11],
        tune_seeds=[20],
        overrides={"min_tokens_per_param": 1.0},
    )
    frame = health.health_frame(rows)
    assert frame.schema == pl.Schema(health.HEALTH_SCHEMA)
    order = [c.name for c in health.CHECKS]
    assert [order.index(n) for n in frame["check_name"]] == sorted(order.index(n) for n in frame["check_name"])
    fails = frame.filter(pl.col("status") == "fail").select("check_name", "size", "arm").rows()
    assert sorted(fails) == [("ladder_brackets_arm", "m", "rlrs"), ("lr_bracketed", "m", "baseline")]
    assert set(frame["status"]) <= {"pass", "warn", "fail"}


def test_blocking_failures_name_the_checks_that_qualify_a_number():
    r, curves, choices, sp = small_study()
    rows = health_view.study_health(
        r, curves, choices, sp, seeds=[0, 1, 2, 3, 4], selection_seeds=[10, 11], tune_seeds=[20]
    )
    # The baseline's lr at m is unbracketed: it qualifies every arm compared with it at m.
    assert health.blocking_failures(rows, "m", "rlrs") == ["lr_bracketed", "ladder_brackets_arm"]
    assert health.blocking_failures(rows, "m", "rlrs", estimate="loss_gap") == ["lr_bracketed"]
    assert health.blocking_failures(health.health_frame(rows), "s", "rlrs") == []
    # A study-wide failure qualifies everything.
    rows += health_checks.seeds_disjoint([0, 1], [1], [])
    assert health.blocking_failures(rows, "s", "rlrs") == ["seeds_disjoint"]
    # Warnings never block.
    assert all(r["status"] != "fail" for r in rows if r["check_name"] == "tokens_per_param")


def test_with_blocking_marks_each_number_with_the_checks_that_block_it():
    r, curves, choices, sp = small_study()
    rows = health_view.study_health(
        r, curves, choices, sp, seeds=[0, 1, 2, 3, 4], selection_seeds=[10, 11], tune_seeds=[20]
    )
    estimates = sp.with_columns(pl.Series("loss_gap", [0.1, 0.1])).vstack(
        pl.DataFrame(
            [{"size": "s", "family": "dense", "arm": "other", "speedup": None, "bound": None, "loss_gap": None}]
        )
    )
    got = health.with_blocking(estimates, rows)
    assert got.select("size", "arm", "speedup_blocked_by", "loss_gap_blocked_by").rows() == [
        ("s", "rlrs", None, None),  # no check fails at s: both numbers are valid
        ("m", "rlrs", "lr_bracketed, ladder_brackets_arm", "lr_bracketed"),  # the bound: check 3 too
        ("s", "other", None, None),  # no number, nothing to block
    ]
    # The same decision as blocking_failures, from a frame of the rows as from the rows.
    assert health.with_blocking(estimates, health.health_frame(rows)).equals(got)


def test_settings_are_one_table_with_overrides_by_name():
    assert {s.name for s in health.SETTINGS} == set(S)
    assert S["min_tokens_per_param"] == 10.0 and S["min_seeds"] == 3.0 and S["warn_seeds"] == 5.0
    assert health.settings({"max_dropped_frac": 0.3})["max_dropped_frac"] == 0.3
    with pytest.raises(ConfigError, match=r"health.min_tokens: unknown health setting; allowed: noise_z, "):
        health.settings({"min_tokens": 5})
    with pytest.raises(ConfigError, match=r"health.noise_z: -1 is not allowed; expected a number >= 0"):
        health.settings({"noise_z": -1})


def test_missing_input_columns_are_named():
    r, curves, choices, sp = small_study()
    with pytest.raises(ValueError, match="runs: missing column.s. tokens"):
        health_view.study_health(r.drop("tokens"), curves, choices, sp, [0], None)


def test_each_spec_check_has_a_named_check():
    assert sorted({c.number for c in health.CHECKS}) == list(range(1, 9))
    assert np.all([c.scope in ("arm", "size", "family", "study") for c in health.CHECKS])


def test_scaling_points_fail_check_2_unless_they_ran_at_their_sizes_bracketed_lr():
    def choice(size, lr, bracketed, **kw):
        base = {"size": size, "family": "dense", "arm": "rlrs", "lr": lr, "bracketed": bracketed}
        return base | {"cap_reached": False, "n_points": 3, "failed": False, "note": None} | kw

    choices = pl.DataFrame(
        [
            choice("a", 1e-3, True),
            choice("b", 1e-3, False, cap_reached=True, n_points=5),
            choice("c", 1e-3, False, n_points=1),
            choice("d", None, False, failed=True, note="every lr diverged down to the cap"),
            choice("e", 2e-3, True),
        ]
    )
    scaling = pl.DataFrame(
        [{"size": s, "family": "dense", "arm": "rlrs", "lr": 1e-3} for s in ("a", "a", "b", "c", "d", "e", "f")]
    )
    got = {r["size"]: r for r in scaling_lr.scaling_lr(scaling, choices)}
    assert {s: r["status"] for s, r in got.items()} == {
        "a": "pass",
        "b": "fail",
        "c": "fail",
        "d": "fail",
        "e": "fail",
        "f": "fail",
    }
    assert got["a"]["message"] == "the scaling points' lr 0.001 is the bracketed best lr at this size"
    assert got["a"]["value"] == 1e-3 and got["a"]["scope"] == "arm"
    assert "is at the edge of its sweep after the bracketing cap" in got["b"]["message"]
    assert "lr 0.001 is the only lr that ran at this size (no lr sweep)" in got["c"]["message"]
    assert "the lr selection at this size failed (every lr diverged down to the cap)" in got["d"]["message"]
    assert "not at the lr the sweep chose at this size (0.002)" in got["e"]["message"]
    assert "no lr sweep ran at this size" in got["f"]["message"]
    # What it qualifies: the scaling numbers only; lr_bracketed qualifies the sweeps' points, not the scaling ones.
    check = {c.name: c for c in health.CHECKS}
    assert check["scaling_lr"].qualifies == {"scaling"}
    assert "sweeps" in check["lr_bracketed"].qualifies and "scaling" not in check["lr_bracketed"].qualifies
    rows = scaling_lr.scaling_lr(scaling, choices) + health_checks.seeds_disjoint([0], [0], [])
    assert health.named_checks(rows, [("dense", "b", "rlrs")], "scaling") == {
        "failed_checks": "scaling_lr, seeds_disjoint",
        "warned_checks": None,
    }
    assert health.named_checks(rows, [("dense", "a", "rlrs")], "speedup") == {
        "failed_checks": "seeds_disjoint",
        "warned_checks": None,
    }
    with pytest.raises(ValueError, match="estimate: 'lr'; allowed: speedup, loss_gap, sweeps, scaling"):
        health.named_checks(rows, [], "lr")
