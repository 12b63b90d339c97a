"""rlrs.analysis on constructed studies whose answers are known in closed form.

Every test writes a real DuckDB file (tests/_analysis_fixtures.py), runs
`materialize` on it and reads the answer back through the views the report
and users query.
"""

from __future__ import annotations

import math

import duckdb
import numpy as np
import polars as pl
import pytest
from scipy.interpolate import PchipInterpolator

from rlrs import analysis
from rlrs.analysis import curves as C
from rlrs.analysis import stats
from rlrs.errors import ConfigError

from _analysis_fixtures import LADDER, L, StudyDB, T, add_ladder, add_usweep


def materialized(db: StudyDB, tmp_path, name: str = "rlrs.duckdb") -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(str(db.write(tmp_path / name)))
    con.execute("BEGIN")
    analysis.materialize(con)
    con.execute("COMMIT")
    return con


def view(con, name: str, where: str = "true") -> pl.DataFrame:
    return con.sql(f"SELECT * FROM {name} WHERE {where}").pl()


def row(frame: pl.DataFrame, **match) -> dict:
    out = frame.filter(*(pl.col(k) == v for k, v in match.items()))
    assert out.height == 1, out
    return out.row(0, named=True)


def test_ladder_recovers_a_power_law_speedup(tmp_path):
    db = StudyDB()
    add_ladder(db)
    db.run(arm="rlrs", steps=T, loss=L(1.2 * T))
    con = materialized(db, tmp_path)
    r = row(view(con, "speedup"), arm="rlrs", definition="ladder")
    assert r["speedup"] == pytest.approx(0.20, abs=0.005)
    assert r["saved"] == pytest.approx(1 / 6, abs=0.004)
    assert r["t_star"] == pytest.approx(1.2 * T, abs=5)
    assert r["bound"] is None
    assert (r["n_seeds"], r["steps"], r["baseline_lengths"]) == (1, T, 5)
    assert r["arm_loss"] == pytest.approx(L(1.2 * T), abs=1e-12)
    assert r["params_nonembedding"] == db.params("s1")
    # One seed: no interval, and the note says why.
    assert r["ci_low"] is None and r["ci_high"] is None
    assert "fewest seeds in a group 1 (< 3): no interval" in r["note"] and r["method"] == "point"


def test_no_extrapolation_beyond_the_ladder(tmp_path):
    db = StudyDB()
    add_ladder(db)
    db.run(arm="better", steps=T, loss=L(3 * T))  # beats the 2T baseline
    db.run(arm="worse", steps=T, loss=L(0.3 * T))  # worse than the 0.5T baseline
    sp = view(materialized(db, tmp_path), "speedup", "definition = 'ladder'")
    better, worse = row(sp, arm="better"), row(sp, arm="worse")
    assert better["speedup"] is None and better["bound"] == "> 1.00" and better["saved"] is None
    assert worse["speedup"] is None and worse["bound"] == "< -0.50"
    assert "no extrapolation" in better["note"]


def test_an_interval_beyond_the_ladder_has_no_numeric_ends(tmp_path):
    # Every seed of the arm beats the longest baseline: the point is a bound
    # and no bootstrap resample lands inside the range, so neither CI end may
    # be a number (the stand-in beyond the edge must not leak out).
    db = StudyDB()
    add_ladder(db, seeds=(0, 1, 2), noise=(-0.004, 0.0, 0.004))
    for seed, eps in zip((0, 1, 2), (0.003, -0.003, 0.0)):
        db.run(arm="rlrs", seed=seed, steps=T, loss=L(3 * T) + eps)
    sp = view(materialized(db, tmp_path), "speedup")
    for definition in ("ladder", "target"):
        r = row(sp, arm="rlrs", definition=definition)
        assert r["bound"] is not None and r["speedup"] is None and r["n_seeds"] == 3
        assert r["ci_low"] is None and r["ci_high"] is None, (definition, r)
        assert r["saved_ci_low"] is None and r["saved_ci_high"] is None


def test_bootstrap_interval_over_three_seeds_contains_the_truth(tmp_path):
    db = StudyDB()
    noise = (-0.004, 0.0, 0.004)  # zero mean per group: the point estimate is exact
    add_ladder(db, seeds=(0, 1, 2), noise=noise)
    for seed, eps in zip((0, 1, 2), (0.003, -0.003, 0.0)):
        db.run(arm="rlrs", seed=seed, steps=T, loss=L(1.2 * T) + eps)
    con = materialized(db, tmp_path)
    r = row(view(con, "speedup"), arm="rlrs", definition="ladder")
    assert r["speedup"] == pytest.approx(0.20, abs=0.005)
    assert r["n_seeds"] == 3 and r["baseline_seeds"] == 3
    assert r["ci_low"] < 0.20 < r["ci_high"]
    assert r["ci_high"] - r["ci_low"] < 0.2  # noise of 0.004 nats is a few % in steps
    # saved's interval is the same interval mapped through 1 - 1/(1 + s).
    assert r["saved_ci_low"] == pytest.approx(1 - 1 / (1 + r["ci_low"]))
    # The final-loss gap at the same length (baseline at T minus the arm), with its interval.
    assert r["baseline_loss"] == pytest.approx(L(T)) and r["arm_loss"] == pytest.approx(L(1.2 * T))
    assert r["loss_gap"] == pytest.approx(L(T) - L(1.2 * T)) and r["loss_gap"] > 0
    # The loss-gap interval from 3 paired seeds is the Student-t interval on the
    # per-seed differences, by hand: d = base - arm per seed, mean +- t(0.975, 2) * sd / sqrt(3).
    d = [L(T) + b - (L(1.2 * T) + a) for b, a in zip(noise, (0.003, -0.003, 0.0))]
    mean = sum(d) / 3
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / 2)
    half = 4.302652729749464 * sd / math.sqrt(3)  # scipy.stats.t.ppf(0.975, 2)
    assert (r["loss_gap_method"], r["loss_gap_n_pairs"]) == ("paired-t", 3)
    assert r["loss_gap"] == pytest.approx(mean, abs=1e-12)
    assert r["loss_gap_ci_low"] == pytest.approx(mean - half, abs=1e-12)
    assert r["loss_gap_ci_high"] == pytest.approx(mean + half, abs=1e-12)
    # Welch's unpaired interval beside it; the speedup's interval is the seed-joint bootstrap.
    assert r["welch_ci_low"] < r["welch_gap"] < r["welch_ci_high"]
    assert (r["method"], r["n_pairs"], r["n_resamples"]) == ("paired-bootstrap", 3, 2000)
    assert (
        r["reference"]
        == f"baseline lr {r['baseline_lr']:g}, 5 lengths {int(T * LADDER[0])}-{int(T * LADDER[-1])} steps"
    )
    # The target definition resamples whole eval curves (one per baseline seed).
    tg = row(view(con, "speedup"), arm="rlrs", definition="target")
    assert tg["baseline_seeds"] == 3 and tg["ci_low"] < tg["speedup"] < tg["ci_high"]
    # A fixed bootstrap seed: recomputing gives the identical interval.
    again = analysis.compute(con, "t")["speedup"]
    assert row(again, arm="rlrs", definition="ladder")["ci_low"] == r["ci_low"]


def test_target_definition_reads_the_longest_baseline_eval_curve(tmp_path):
    db = StudyDB()
    curve = lambda t: 2.0 + 1000.0 / t  # noqa: E731  eval every 100 steps (T / 10)
    add_ladder(db, curve=curve)
    # Evals of the 2T run fall at 200, 400, ..., 2000 steps trained.
    db.run(arm="at_point", steps=T, loss=curve(1200))  # exactly on an eval point
    db.run(arm="between", steps=T, loss=(curve(1200) + curve(1400)) / 2)  # linear between two
    db.run(arm="never", steps=T, loss=curve(2000) - 0.01)
    sp = view(materialized(db, tmp_path), "speedup", "definition = 'target'")
    assert row(sp, arm="at_point")["speedup"] == pytest.approx(0.2, abs=1e-9)
    assert row(sp, arm="between")["speedup"] == pytest.approx(0.3, abs=1e-9)
    assert row(sp, arm="between")["saved"] == pytest.approx(1 - 1 / 1.3, abs=1e-9)
    never = row(sp, arm="never")
    assert never["speedup"] is None and never["bound"] == "> 1.00"
    assert "2000-step run" in row(sp, arm="at_point")["note"]


def test_each_arm_is_compared_at_its_best_lr(tmp_path):
    db = StudyDB()
    add_ladder(db)
    # main lr 1e-3 is the sweep's factor 1 (one run id in main and lr)
    sweep = {5e-4: 2.62, 1e-3: 2.61, 2e-3: L(1.2 * T)}
    for lr, loss in sweep.items():
        f = lr / 1e-3
        kw = dict(arm="rlrs", lr=lr, steps=T, loss=loss, tags={"lr": lr, "lr_factor": f})
        if lr == 1e-3:
            db.run(**kw | {"sweep": "main", "tags": {}, "also": (("lr", kw["tags"]),)})
        else:
            db.run(**kw | {"sweep": "lr"})
    # 4e-3 looks best on its surviving seed, but its other seed diverged: unstable, not eligible.
    db.run(arm="rlrs", sweep="lr", lr=4e-3, seed=0, steps=T, loss=2.0, tags={"lr": 4e-3, "lr_factor": 4.0})
    db.run(arm="rlrs", sweep="lr", lr=4e-3, seed=1, steps=T, status="diverged", tags={"lr": 4e-3, "lr_factor": 4.0})
    con = materialized(db, tmp_path)
    lr = view(con, "lr_sweep", "arm = 'rlrs'").sort("lr")
    assert lr["lr"].to_list() == [5e-4, 1e-3, 2e-3, 4e-3]
    assert lr["lr_factor"].to_list() == [0.5, 1.0, 2.0, 4.0]
    assert lr["is_best"].to_list() == [False, False, True, False]
    assert lr["n"].to_list() == [1, 1, 1, 1] and lr["n_diverged"].to_list() == [0, 0, 0, 1]
    r = row(view(con, "speedup"), arm="rlrs", definition="ladder")
    assert r["arm_lr"] == 2e-3
    assert r["speedup"] == pytest.approx(0.20, abs=0.005)
    assert "lr 0.004 not chosen despite a lower mean: 1 diverged seed(s)" in r["note"]
    assert "edge of the sweep" not in r["note"]  # 2e-3 has a completed neighbour on each side


def test_non_completed_runs_are_excluded_and_counted(tmp_path):
    db = StudyDB()
    add_ladder(db)
    db.run(arm="rlrs", seed=0, steps=T, loss=L(1.2 * T))
    db.run(arm="rlrs", seed=1, steps=T, status="diverged")
    db.run(arm="rlrs", seed=2, steps=T, status="failed")
    con = materialized(db, tmp_path)
    r = row(view(con, "speedup"), arm="rlrs", definition="ladder")
    # The only lr has a diverged seed: it is still compared (on its
    # completed seed), and the note says what was left out and why.
    assert r["speedup"] == pytest.approx(0.20, abs=0.005) and r["n_seeds"] == 1
    assert "excluded 2 non-completed run(s) (1 diverged)" in r["note"]
    assert "compared lr 0.001 has 1 diverged seed(s)" in r["note"]
    fl = row(view(con, "final_losses_by_arm"), arm="rlrs")
    assert (fl["n"], fl["n_excluded"]) == (1, 2)


def test_failed_seed_is_excluded_but_the_comparison_stands(tmp_path):
    db = StudyDB()
    add_ladder(db)
    db.run(arm="rlrs", seed=0, steps=T, loss=L(1.2 * T))
    db.run(arm="rlrs", seed=1, steps=T, status="failed")
    r = row(view(materialized(db, tmp_path), "speedup"), arm="rlrs", definition="ladder")
    assert r["speedup"] == pytest.approx(0.20, abs=0.005) and r["n_seeds"] == 1
    assert "excluded 1 non-completed run(s) (0 diverged)" in r["note"]


def test_usweep_best_factor_and_transfer_regret(tmp_path):
    db = StudyDB()
    add_usweep(db, "s1", {0.5: 2.30, 1.0: 2.20, 2.0: 2.10})  # best x2 at the small size
    add_usweep(db, "s2", {0.5: 2.05, 1.0: 2.00, 2.0: 2.05})  # best x1 at the larger one
    add_usweep(db, "s3", {0.5: 1.95, 1.0: 1.90})  # x2 was not run here
    con = materialized(db, tmp_path)
    u = view(con, "usweep").sort("size", "factor")
    assert u.filter(pl.col("is_best")).select("size", "factor").rows() == [("s1", 2.0), ("s2", 1.0), ("s3", 1.0)]
    assert u.filter(pl.col("size") == "s1")["mean_loss"].to_list() == [2.30, 2.20, 2.10]
    assert set(u["base_arm"]) == {"rlrs"}
    reg = view(con, "regret").sort("size")
    assert reg["parameter"].to_list() == ["embedding.start (rlrs)"] * 2
    s2, s3 = reg.row(0, named=True), reg.row(1, named=True)
    assert (s2["size"], s2["reference_size"], s2["chosen_factor"], s2["best_factor"]) == ("s2", "s1", 2.0, 1.0)
    assert s2["regret"] == pytest.approx(0.05, abs=1e-12) and s2["regret"] > 0
    assert s3["regret"] is None and "not run" in s3["note"]


def test_lr_regret_is_zero_when_the_small_choice_stays_best(tmp_path):
    db = StudyDB()
    for size, losses in (("s1", {0.5: 2.5, 1.0: 2.4, 2.0: 2.45}), ("s2", {0.5: 2.2, 1.0: 2.1, 2.0: 2.3})):
        for f, loss in losses.items():
            tags = {"lr": 1e-3 * f, "lr_factor": f}
            extra = (
                {"sweep": "main", "tags": {}, "also": (("lr", tags),)} if f == 1.0 else {"sweep": "lr", "tags": tags}
            )
            db.run(size=size, arm="baseline", lr=1e-3 * f, loss=loss, **extra)
    con = materialized(db, tmp_path)
    reg = row(view(con, "regret"), parameter="lr (baseline)")
    assert (reg["chosen_factor"], reg["best_factor"], reg["regret"]) == (1.0, 1.0, 0.0)


def test_best_lr_is_chosen_on_shared_seeds_not_one_draw_against_a_mean(tmp_path):
    # main lr: 3 seeds, mean 2.033; lr x2: seed 0 only, 1.95. On seed 0 alone
    # the main lr is better (1.90): a lone lucky draw must not win on a mean.
    db = StudyDB()
    for seed, loss in enumerate([1.90, 2.10, 2.10]):
        also = (("lr", {"lr": 1e-3, "lr_factor": 1.0}),) if seed == 0 else ()
        db.run(arm="rlrs", lr=1e-3, seed=seed, loss=loss, also=also)
        db.run(arm="baseline", lr=1e-3, seed=seed, loss=2.3)
    db.run(arm="rlrs", sweep="lr", lr=2e-3, seed=0, loss=1.95, tags={"lr": 2e-3, "lr_factor": 2.0})
    con = materialized(db, tmp_path)
    best = view(con, "lr_sweep").filter(pl.col("is_best") & (pl.col("arm") == "rlrs"))
    assert best["lr"].to_list() == [1e-3]
    sp = row(view(con, "speedup"), arm="rlrs", definition="target")
    assert sp["arm_lr"] == 1e-3 and sp["n_seeds"] == 3
    assert "best lr chosen on the seed(s) every lr point has (0)" in sp["note"]


def test_regret_refers_each_family_to_its_own_smallest_size(tmp_path):
    # dense s1 < s2 and MoE m1 < m2 (params grow with the size's order): the
    # MoE sizes must not be judged against the dense sweep's choice.
    db = StudyDB()
    curves = {
        ("s1", False): {0.5: 2.5, 1.0: 2.4, 2.0: 2.45},
        ("s2", False): {0.5: 2.2, 1.0: 2.1, 2.0: 2.3},
        ("m1", True): {0.5: 2.5, 1.0: 2.6, 2.0: 2.7},
        ("m2", True): {0.5: 2.15, 1.0: 2.1, 2.0: 2.3},
    }
    for (size, moe), losses in curves.items():
        for f, loss in losses.items():
            tags = {"lr": 1e-3 * f, "lr_factor": f}
            extra = (
                {"sweep": "main", "tags": {}, "also": (("lr", tags),)} if f == 1.0 else {"sweep": "lr", "tags": tags}
            )
            db.run(size=size, arm="baseline", lr=1e-3 * f, loss=loss, moe=moe, **extra)
    reg = view(materialized(db, tmp_path), "regret").sort("size")
    assert reg.select("size", "reference_size").rows() == [("m2", "m1"), ("s2", "s1")]
    m2 = row(reg, size="m2")
    assert (m2["chosen_factor"], m2["best_factor"]) == (0.5, 1.0) and m2["regret"] == pytest.approx(0.05)
    assert row(reg, size="s2")["regret"] == 0.0


def test_ablation_and_usweep_compare_with_the_reference_run_of_the_same_seed(tmp_path):
    # The reference arm's seeds differ by a seed effect (+0.1, 0, -0.1); the
    # removal ran on seed 0 only and is 0.05 worse than seed 0's reference.
    db = StudyDB()
    effect = {0: 0.1, 1: 0.0, 2: -0.1}
    for seed, e in effect.items():
        db.run(
            arm="rlrs",
            seed=seed,
            loss=2.5 + e,
            also=(("usweep", {"component": "head", "which": "end", "factor": 1.0}),),
        )
    db.run(arm="rlrs", seed=0, sweep="removal", loss=2.5 + 0.1 + 0.05, tags={"component": "embedding"})
    db.run(
        arm="rlrs",
        seed=0,
        sweep="usweep",
        loss=2.5 + 0.1 - 0.02,
        tags={"component": "head", "which": "end", "factor": 2.0},
    )
    con = materialized(db, tmp_path)
    r = row(view(con, "ablation"), kind="removal")
    assert r["delta"] == pytest.approx(0.05, abs=1e-12) and r["n_pairs"] == 1 and r["method"] == "point"
    assert r["delta_unpaired"] == pytest.approx(0.15, abs=1e-12)  # one seed against the 3-seed mean
    assert r["reference_loss"] == pytest.approx(2.6) and r["reference_loss_all"] == pytest.approx(2.5)
    assert "seed-matched on seed(s) 0 of the reference's 0, 1, 2" in r["note"] and r["delta_ci_low"] is None
    u = row(view(con, "usweep"), factor=2.0)
    assert u["delta"] == pytest.approx(-0.02, abs=1e-12) and u["n_pairs"] == 1
    assert u["mean_loss"] == pytest.approx(2.58)


def test_ablation_signs(tmp_path):
    db = StudyDB()
    db.run(arm="baseline", loss=2.50)
    db.run(arm="rlrs", loss=2.40)
    db.run(arm="rlrs", sweep="removal", loss=2.48, tags={"component": "embedding"})  # removing hurts
    db.run(arm="rlrs", sweep="removal", loss=2.39, tags={"component": "head"})  # removing helps slightly
    db.run(arm="baseline", sweep="contribution", loss=2.44, tags={"component": "embedding", "source_arm": "rlrs"})
    db.run(arm="baseline", sweep="contribution", loss=2.52, lr=5e-4, tags={"component": "head", "source_arm": "rlrs"})
    ab = view(materialized(db, tmp_path), "ablation")
    emb_rm = row(ab, kind="removal", component="embedding")
    assert emb_rm["reference_arm"] == "rlrs" and emb_rm["delta"] == pytest.approx(0.08)
    assert row(ab, kind="removal", component="head")["delta"] == pytest.approx(-0.01)
    emb_c = row(ab, kind="contribution", component="embedding")
    assert emb_c["reference_arm"] == "baseline" and emb_c["delta"] == pytest.approx(-0.06)
    # A contribution run at another lr than the baseline has no fair reference.
    head_c = row(ab, kind="contribution", component="head")
    assert head_c["delta"] is None and "same size, lr and length" in head_c["note"]


def test_first_reach_takes_the_first_crossing_of_a_non_monotone_curve():
    x = np.array([1.0, 2.0, 3.0, 4.0])
    y = np.array([3.0, 1.0, 2.0, 0.5])
    assert stats.first_reach(x, y, 2.0) == pytest.approx(1.5)
    assert stats.first_reach(x, y, 0.1) == math.inf
    assert stats.first_reach(x, y, 3.5) == -math.inf
    assert stats.first_reach(x, y, 3.0) == 1.0
    # PCHIP is monotone between points: the crossing stays in the same interval.
    assert 1.0 < stats.first_reach(x, y, 2.0, kind="pchip") < 2.0


def test_batched_pchip_crossing_matches_scipys_own_root_finder():
    # The bisection on PCHIP pieces (vectorized for the bootstrap) against
    # PPoly.solve on random decreasing-ish curves, one at a time.
    rng = np.random.default_rng(1)
    x = np.log([500.0, 750.0, 1000.0, 1500.0, 2000.0])
    y = 3.0 - np.cumsum(rng.uniform(0.0, 0.3, (200, 5)), axis=1) + rng.normal(0, 0.03, (200, 5))
    level = rng.uniform(y.min(axis=1), y.max(axis=1))
    got = stats.first_reach(x, y, level, kind="pchip")
    for row, lv, g in zip(y, level, got):
        if row[0] < lv:
            assert g == -math.inf
            continue
        roots = PchipInterpolator(x, row).solve(lv, extrapolate=False)
        assert g == pytest.approx(roots.min(), abs=1e-9)


def test_curves_are_downsampled_and_averaged_over_seeds(tmp_path):
    db = StudyDB(log_every=1)
    for arm in ("baseline", "rlrs"):
        for seed in (0, 1):
            db.run(arm=arm, seed=seed, steps=2000, loss=2.0 + seed * 0.1)
    con = materialized(db, tmp_path)
    curves = view(con, "loss_curves")
    train = curves.filter(pl.col("train_loss").is_not_null())
    per_series = train.group_by("arm").len()
    assert per_series["len"].max() <= C.MAX_POINTS_PER_SERIES
    assert set(train["n_runs"]) == {2}
    # Mean over the two seeds: the last bin's eval loss is the mean final loss.
    last_eval = curves.filter(pl.col("eval_loss").is_not_null() & (pl.col("step") == 2000))
    assert sorted(last_eval["eval_loss"]) == pytest.approx([2.05, 2.05])
    upd = view(con, "update_sizes")
    assert upd.height <= C.ROW_BUDGET
    assert C.points_per_series(10_000) == C.MIN_POINTS_PER_SERIES


def test_schedules_frame_holds_the_applied_rates(tmp_path):
    db = StudyDB()
    db.run(arm="baseline", loss=2.5)
    db.run(arm="rlrs", loss=2.4)
    sched = view(materialized(db, tmp_path), "lr_schedules")
    first = sched.filter(pl.col("step") == sched["step"].max())
    # The last bin averages the final rates: the embedding floor of RLRS is
    # lr * f * 0.667, the baseline's lr * f.
    emb = {r["arm"]: r["lr"] for r in first.filter(pl.col("component") == "embedding").iter_rows(named=True)}
    assert emb["rlrs"] / emb["baseline"] == pytest.approx(0.667, rel=0.02)


def test_schedules_show_the_smallest_size_of_each_model_family(tmp_path):
    db = StudyDB()
    for size, moe in (("s1", False), ("s2", False), ("m1", True)):
        db.run(size=size, arm="baseline", loss=2.5, moe=moe)
        db.run(
            size=size, arm="rlrs", loss=2.4, moe=moe, multipliers={"experts": (0.3, 1.125), "embedding": (5.0, 0.666)}
        )
    sched = view(materialized(db, tmp_path), "lr_schedules")
    comps = {s: set(sched.filter(pl.col("size") == s)["component"]) for s in sched["size"].unique()}
    assert comps == {
        "s1": {"embedding", "attention", "ffn", "head", "norm"},
        "m1": {"embedding", "attention", "router", "experts", "head", "norm"},
    }
    # RLRS experts peak at 0.3x the base lr of 1e-3.
    peak = sched.filter((pl.col("arm") == "rlrs") & (pl.col("component") == "experts"))["lr"].max()
    assert peak == pytest.approx(0.3e-3, rel=1e-3)


def test_materialize_runs_inside_the_callers_transaction(tmp_path):
    db = StudyDB()
    db.run(arm="baseline", loss=2.5)
    con = duckdb.connect(str(db.write(tmp_path / "x.duckdb")))
    con.execute("BEGIN")
    analysis.materialize(con)
    con.execute("ROLLBACK")
    names = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    assert "speedup" not in names and "analysis_speedup" not in names
    con.execute("BEGIN")
    analysis.materialize(con)
    con.execute("COMMIT")
    cols = [r[0] for r in con.execute("DESCRIBE speedup").fetchall()]
    for c in (
        "size",
        "arm",
        "definition",
        "speedup",
        "ci_low",
        "ci_high",
        "bound",
        "saved",
        "n_seeds",
        "steps",
        "t_star",
        "params_nonembedding",
        "arm_loss",
        "note",
    ):
        assert c in cols
    for v in ("final_losses_by_arm", "transfer", "lr_sweep", "usweep", "regret", "ablation"):
        con.execute(f"SELECT * FROM {v}").fetchall()  # exists, even when empty


def test_unknown_study_is_refused_with_the_allowed_names(tmp_path):
    db = StudyDB(study="demo")
    db.run(arm="baseline", loss=2.5)
    con = duckdb.connect(str(db.write(tmp_path / "x.duckdb")))
    with pytest.raises(ConfigError, match=r"study: 'nope' is not in this database; allowed: demo"):
        analysis.compute(con, "nope")


def test_views_go_stale_when_runs_are_ingested_after_them(tmp_path):
    db = StudyDB()
    add_ladder(db)
    con = materialized(db, tmp_path)
    assert not analysis.is_stale(con)
    # As if the views were made an hour before the last ingest.
    con.execute("UPDATE analysis_meta SET materialized_at = materialized_at - INTERVAL 1 HOUR")
    assert analysis.is_stale(con)
    con.execute("BEGIN")
    analysis.materialize(con)
    con.execute("COMMIT")
    assert not analysis.is_stale(con)


def test_the_baseline_is_the_arm_the_study_ladders(tmp_path):
    db = StudyDB(config={"study": "t", "sweeps": {"ladder": {"arm": "cosine", "factors": [0.5, 2.0]}}})
    for f in (0.5, 1.0, 2.0):
        db.run(
            arm="cosine",
            sweep="main" if f == 1.0 else "ladder",
            steps=int(T * f),
            loss=L(T * f),
            tags={} if f == 1.0 else {"length_factor": f},
        )
    db.run(arm="rlrs", loss=L(1.2 * T))
    sp = view(materialized(db, tmp_path), "speedup", "definition = 'ladder'")
    assert sp["arm"].to_list() == ["rlrs"]
    assert sp["speedup"][0] == pytest.approx(0.2, abs=0.01)


def test_materialize_survives_incomplete_and_odd_studies(tmp_path):
    # materialize runs inside `rlrs collect`'s transaction: odd data must not
    # make the ingest fail. Sizes whose every run failed, sweep rows without
    # tags, a run with no size, a planned run never ingested.
    db = StudyDB()
    add_ladder(db)
    db.run(arm="rlrs", loss=L(1.2 * T))
    db.run(size="s2", arm="baseline", status="failed")
    db.run(size="s2", arm="rlrs", status="diverged")
    db.run(arm="rlrs", sweep="usweep", loss=2.5, tags={})
    db.run(arm="rlrs", sweep="removal", loss=2.5, tags={})
    db.run(size=None, arm="baseline", sweep="main", seed=9, loss=2.5)
    db.plan.append(("t", "000000000000", "s3", "rlrs", "main", "{}"))
    con = materialized(db, tmp_path)
    sp = view(con, "speedup")
    assert row(sp, size="s1", definition="ladder")["speedup"] == pytest.approx(0.2, abs=0.005)
    s2 = row(sp, size="s2", definition="ladder")
    assert s2["speedup"] is None and "no completed runs of this arm" in s2["note"]
    assert view(con, "usweep").is_empty() and view(con, "ablation").is_empty()


def test_a_best_lr_at_the_edge_of_the_sweep_is_flagged(tmp_path):
    db = StudyDB()
    add_ladder(db)
    for f, loss in ((0.5, 2.7), (1.0, 2.65), (2.0, L(1.2 * T))):
        tags = {"lr": 1e-3 * f, "lr_factor": f}
        extra = {"sweep": "main", "tags": {}, "also": (("lr", tags),)} if f == 1.0 else {"sweep": "lr", "tags": tags}
        db.run(arm="rlrs", lr=1e-3 * f, loss=loss, **extra)
    r = row(view(materialized(db, tmp_path), "speedup"), arm="rlrs", definition="ladder")
    assert r["arm_lr"] == 2e-3
    assert "best lr 0.002 is at the edge of the sweep" in r["note"]


def test_ladder_uses_only_the_baseline_best_lr(tmp_path):
    # The ladder was run at lr 1e-3, but the baseline's lr sweep finds 2e-3
    # better at the main length: a ladder at 1e-3 would compare the arm with a
    # baseline trained worse at the other lengths, so no ladder estimate.
    db = StudyDB()
    add_ladder(db)  # lr 1e-3 at every length
    db.run(arm="baseline", sweep="lr", lr=2e-3, steps=T, loss=L(T) - 0.01, tags={"lr": 2e-3, "lr_factor": 2.0})
    db.run(arm="rlrs", steps=T, loss=L(1.2 * T))
    r = row(view(materialized(db, tmp_path), "speedup"), arm="rlrs", definition="ladder")
    assert r["speedup"] is None and r["bound"] is None
    assert "at the baseline's best lr; have 1" in r["note"]
    assert "ladder runs not at the baseline's best lr 0.002 left out" in r["note"]


def test_ladder_at_the_best_lr_ignores_other_lr_runs(tmp_path):
    db = StudyDB()
    add_ladder(db)  # lr 1e-3: the best
    # A worse lr's runs at other lengths must not enter L(T).
    db.run(arm="baseline", sweep="lr", lr=2e-3, steps=T, loss=L(T) + 0.05, tags={"lr": 2e-3, "lr_factor": 2.0})
    db.run(arm="baseline", sweep="ladder", lr=2e-3, steps=2 * T, loss=L(T), tags={"length_factor": 2.0, "steps": 2 * T})
    db.run(arm="rlrs", steps=T, loss=L(1.2 * T))
    r = row(view(materialized(db, tmp_path), "speedup"), arm="rlrs", definition="ladder")
    assert r["speedup"] == pytest.approx(0.20, abs=0.005)
    assert r["baseline_lengths"] == 5


def staged_lr_study() -> StudyDB:
    """A staged study: per size, stage 1 ran lr x0.5, x1, x2 on the selection
    seeds 10 and 11, and stage 2 the chosen lr on the reported seeds 0-2,
    which happen to land 0.20 nats above the selection seeds at s2. So the
    chosen lr's point at s2 pools 5 seeds (mean 2.37) and the others hold 2."""
    db = StudyDB(config={"study": "t", "seeds": [0, 1, 2], "selection_seeds": [10, 11]})
    stage1 = {"s1": {0.5: 2.60, 1.0: 2.50, 2.0: 2.55}, "s2": {0.5: 2.40, 1.0: 2.30, 2.0: 2.25}}
    chosen, reported = {"s1": 1.0, "s2": 2.0}, {"s1": 2.50, "s2": 2.45}
    for size, losses in stage1.items():
        for f, loss in losses.items():
            for seed, eps in ((10, 0.01), (11, -0.01)):
                tags = {"lr": 1e-3 * f, "lr_factor": f, "stage": "select"}
                db.run(size=size, sweep="lr", lr=1e-3 * f, seed=seed, loss=loss + eps, tags=tags)
        for seed, eps in ((0, 0.01), (1, 0.0), (2, -0.01)):
            db.run(size=size, lr=1e-3 * chosen[size], seed=seed, loss=reported[size] + eps)
    return db


def test_regret_compares_the_seeds_every_point_shares_not_a_pooled_mean(tmp_path):
    con = materialized(staged_lr_study(), tmp_path)
    reg = row(view(con, "regret"), parameter="lr (baseline)")
    assert (reg["reference_size"], reg["size"], reg["chosen_factor"], reg["best_factor"]) == ("s1", "s2", 1.0, 2.0)
    # Pooled, it read 2.30 - 2.37 = -0.07: the small size's choice "better than the best".
    assert reg["loss_at_chosen"] == pytest.approx(2.30) and reg["best_loss"] == pytest.approx(2.25)
    assert reg["regret"] == pytest.approx(0.05, abs=1e-12)
    assert (reg["n_shared"], reg["shared_seeds"]) == (2, "10, 11")
    assert reg["note"] == (
        "seed-matched on seed(s) 10, 11, the ones both points have; pooled over all their seeds: "
        "2.3000 (n=2) at the chosen factor, 2.3700 (n=5) at the best"
    )
    sweep = view(con, "lr_sweep", "size = 's2'").sort("lr")
    # The chosen lr pools the selection and the reported seeds; the shared-seed mean is the ranking's.
    assert sweep["is_best"].to_list() == [False, False, True]
    assert sweep["n"].to_list() == [2, 2, 5] and sweep["n_shared"].to_list() == [2, 2, 2]
    assert sweep["mean_loss"].to_list() == pytest.approx([2.40, 2.30, (2 * 2.25 + 3 * 2.45) / 5])
    assert sweep["mean_loss_shared"].to_list() == pytest.approx([2.40, 2.30, 2.25])
    assert set(sweep["shared_seeds"]) == {"10, 11"}


def test_regret_pairs_the_two_points_seeds_and_refuses_a_diverged_choice(tmp_path):
    # At s2 an extra lr x4 ran on seed 10 only: the shared-seed means of the sweep thin to seed 10, the
    # regret (chosen x1 against the best x2) still pairs both seeds the two points have.
    db = staged_lr_study()
    db.run(size="s2", sweep="lr", lr=4e-3, seed=10, loss=2.9, tags={"lr": 4e-3, "lr_factor": 4.0, "stage": "select"})
    con = materialized(db, tmp_path)
    assert view(con, "lr_sweep", "size = 's2'").sort("lr")["n_shared"].to_list() == [1, 1, 1, 1]
    reg = row(view(con, "regret"), parameter="lr (baseline)")
    assert (reg["regret"], reg["n_shared"], reg["shared_seeds"]) == (pytest.approx(0.05, abs=1e-12), 2, "10, 11")
    # The chosen x1 diverged on seed 11 at s2: its surviving seed would flatter it; no regret.
    db = staged_lr_study()
    db.run(size="s2", sweep="lr", lr=1e-3, seed=12, status="diverged", tags={"lr": 1e-3, "lr_factor": 1.0})
    reg = row(view(materialized(db, tmp_path, "diverged.duckdb"), "regret"), parameter="lr (baseline)")
    assert reg["regret"] is None and reg["loss_at_chosen"] is None and reg["best_factor"] == 2.0
    assert reg["note"] == (
        "factor 1 diverged on 1 seed(s) at this size: no regret (the small size's choice is unstable here; "
        "its surviving seeds would flatter it)"
    )


def test_ablations_and_usweep_points_name_the_checks_of_their_cell(tmp_path):
    # Two sizes, 3 seeds, a removal, a contribution and a U-sweep point at each; stage 1 (lr_selection)
    # chose every lr bracketed but rlrs's at s2, which sits at the edge of its sweep after the cap.
    db = StudyDB(config={"study": "t", "seeds": [0, 1, 2]})
    factor1 = (("usweep", {"component": "head", "which": "end", "factor": 1.0}),)
    for size, base in (("s1", 2.6), ("s2", 2.4)):
        for seed, eps in ((0, 0.01), (1, 0.0), (2, -0.01)):
            db.run(size=size, seed=seed, loss=base + eps)
            db.run(size=size, arm="rlrs", seed=seed, loss=base - 0.05 + eps, also=factor1)
            db.run(
                size=size, arm="rlrs", sweep="removal", seed=seed, loss=base - 0.02 + eps, tags={"component": "head"}
            )
            contribution = {"component": "head", "source_arm": "rlrs"}
            db.run(size=size, sweep="contribution", seed=seed, loss=base - 0.03 + eps, tags=contribution)
            u = {"component": "head", "which": "end", "factor": 2.0}
            db.run(size=size, arm="rlrs", sweep="usweep", seed=seed, loss=base - 0.04 + eps, tags=u)
    path = db.write(tmp_path / "rlrs.duckdb")
    con = duckdb.connect(str(path))
    for size in ("s1", "s2"):
        for arm in ("baseline", "rlrs"):
            ok = (size, arm) != ("s2", "rlrs")
            con.execute(
                "INSERT INTO lr_selection (study, size, family, arm, centre_lr, chosen_lr, bracketed, cap_reached, "
                "failed, n_extra, n_points, factor, selection_seeds, ranked_on, note) VALUES "
                "('t', ?, 'dense', ?, 1e-3, 1e-3, ?, ?, false, ?, ?, 2.0, '[10, 11]', '[10, 11]', NULL)",
                [size, arm, ok, not ok, 0 if ok else 2, 3 if ok else 5],
            )
    con.execute("BEGIN")
    analysis.materialize(con)
    con.execute("COMMIT")
    health = view(con, "health")
    # No ladder: check 3 fails at both sizes, but it qualifies a speedup only, not the sweeps' points.
    assert sorted(health.filter(pl.col("status") == "fail").select("check_name", "size", "arm").rows()) == [
        ("ladder_brackets_arm", "s1", "rlrs"),
        ("ladder_brackets_arm", "s2", "rlrs"),
        ("lr_bracketed", "s2", "rlrs"),
    ]
    # The rows warned at every cell: tokens unknown (check 4), the constructed curves' slow start (check 5).
    assert set(health.filter(pl.col("status") == "warn")["check_name"]) == {
        "tokens_per_param",
        "plateau_exit",
        "seeds_per_cell",
    }
    ab = view(con, "ablation").sort("kind", "size")
    assert ab.select("kind", "size", "reference_arm", "failed_checks", "warned_checks").rows() == [
        ("contribution", "s1", "baseline", None, "tokens_per_param, plateau_exit"),
        ("contribution", "s2", "baseline", None, "tokens_per_param, plateau_exit"),  # the baseline's lr is fine
        ("removal", "s1", "rlrs", None, "tokens_per_param, plateau_exit"),
        ("removal", "s2", "rlrs", "lr_bracketed", "tokens_per_param, plateau_exit"),
    ]
    assert ab["delta"].to_list() == pytest.approx([-0.03, -0.03, 0.03, 0.03])
    u = view(con, "usweep").sort("size", "factor")
    assert u.select("size", "factor", "failed_checks").rows() == [
        ("s1", 1.0, None),
        ("s1", 2.0, None),
        ("s2", 1.0, "lr_bracketed"),
        ("s2", 2.0, "lr_bracketed"),
    ]
    assert set(u["warned_checks"]) == {"tokens_per_param, plateau_exit"}  # seeds_per_cell speaks for the comparison


def test_usweep_points_carry_the_mean_over_the_seeds_every_point_has(tmp_path):
    # The factor-1 reference holds seeds 0-2 (seed effects +0.1, 0, -0.1), the x2 point seed 0 only.
    db = StudyDB()
    for seed, e in {0: 0.1, 1: 0.0, 2: -0.1}.items():
        db.run(
            arm="rlrs",
            seed=seed,
            loss=2.5 + e,
            also=(("usweep", {"component": "head", "which": "end", "factor": 1.0}),),
        )
    db.run(arm="rlrs", sweep="usweep", loss=2.58, tags={"component": "head", "which": "end", "factor": 2.0})
    u = view(materialized(db, tmp_path), "usweep").sort("factor")
    assert u["mean_loss"].to_list() == pytest.approx([2.5, 2.58]) and u["n"].to_list() == [3, 1]
    assert u["mean_loss_shared"].to_list() == pytest.approx([2.6, 2.58]) and u["n_shared"].to_list() == [1, 1]
    assert u["is_best"].to_list() == [False, True] and set(u["shared_seeds"]) == {"0"}


def test_the_comparison_leaves_out_the_stage1_runs_that_chose_the_lr(tmp_path):
    # Stage 1 (seeds 10, 11) chose x1 for both arms; on those seeds rlrs's chosen point is its luckiest
    # draw (0.10 below the baseline), stage 2's reported seeds 0-2 differ by 0.03, 0.01 and 0.015.
    # Pooling the selection seeds into the measurement read a gap of 0.051 on 5 "pairs".
    db = StudyDB(config={"study": "t", "seeds": [0, 1, 2], "selection_seeds": [10, 11]})
    stage1 = {"baseline": {0.5: 2.60, 1.0: 2.50, 2.0: 2.55}, "rlrs": {0.5: 2.55, 1.0: 2.40, 2.0: 2.50}}
    for arm, losses in stage1.items():
        for f, loss in losses.items():
            for seed, eps in ((10, 0.01), (11, -0.01)):
                tags = {"lr": 1e-3 * f, "lr_factor": f, "stage": "select"}
                db.run(arm=arm, sweep="lr", lr=1e-3 * f, seed=seed, loss=loss + eps, tags=tags)
    for seed, base, rlrs in ((0, 2.53, 2.50), (1, 2.52, 2.51), (2, 2.51, 2.495)):
        db.run(seed=seed, loss=base)
        db.run(arm="rlrs", seed=seed, loss=rlrs)
    con = materialized(db, tmp_path)
    r = row(view(con, "speedup"), arm="rlrs", definition="ladder")
    assert (r["loss_gap_n_pairs"], r["n_seeds"], r["arm_lr"]) == (3, 3, 1e-3)
    assert r["loss_gap"] == pytest.approx((0.03 + 0.01 + 0.015) / 3, abs=1e-12)
    assert r["arm_loss"] == pytest.approx((2.50 + 2.51 + 2.495) / 3, abs=1e-12)
    assert "stage-1 run(s) on selection seed(s) 10, 11 left out of the comparison (they chose the lr)" in r["note"]
    # The health checks count the same cell: 3 reported seeds per arm, none of them a selection seed.
    seeds = view(con, "health", "check_name = 'seeds_per_cell' AND arm = 'rlrs'")
    assert seeds["value"].to_list() == [3.0]
