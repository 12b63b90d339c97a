"""A scaling study end to end: the sweep expanded, tiny real runs trained
in-process (debug executor), collected, and the scaling-law tables read back
from the database; the sweep's and the settings' bad input refused by name."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

from rlrs import db, tags
from rlrs.errors import ConfigError
from rlrs.study import check_study, expand, make_plan, write_plan

from _cli_fixtures import cli_collect, cli_submit

SIZES = {  # 4 dense sizes
    "d16x1": {"d_model": 16, "n_layers": 1, "n_heads": 2},
    "d24x1": {"d_model": 24, "n_layers": 1, "n_heads": 2},
    "d32x1": {"d_model": 32, "n_layers": 1, "n_heads": 2},
    "d32x2": {"d_model": 32, "n_layers": 2, "n_heads": 2},
}
STEPS = [40, 80, 160]
STUDY = {
    "study": "scal",
    "executor": {"kind": "debug", "timeout_min": 5},
    "defaults": {
        "model": {"seq_len": 32},
        "optim": {"lr": 0.01},
        "data": {"eval_tokens": 2048},
        "train": {"batch_size": 8, "eval_interval": 40, "checkpoint_interval": 1000, "log_interval": 40},
    },
    "sizes": SIZES,
    "arms": {
        "baseline": {},
        "rlrs": {"multipliers": {"embedding": {"start": 5.0, "end": 0.667}, "head": {"start": 1.0, "end": 0.444}}},
    },
    "sweeps": {"main": {"sizes": ["d16x1"]}, "scaling": {"steps": STEPS}},
    "scaling": {"bootstrap": 40, "starts": 4, "holdout": 2, "extrapolate_to": 1e13},
}


def test_scaling_sweep_expands_sizes_by_budgets_per_arm():
    requests = [r for r in expand(copy.deepcopy(STUDY)) if r[2]["sweep"] == tags.SCALING]
    assert len(requests) == 2 * 4 * 3
    cells = {(lb["arm"], lb["size"], cfg["train"]["steps"]) for _, cfg, lb in requests}
    assert len(cells) == 24
    for _, cfg, lb in requests:
        assert lb["tags"] == {"tokens": cfg["train"]["steps"] * 8 * 32}
        assert cfg["optim"]["lr"] == 0.01  # the arm's lr at that size
        assert cfg["schedule"]["warmup_steps"] == int(np.ceil(0.01 * cfg["train"]["steps"]))
    # The main run of d16x1 at its default length is not a scaling point; at a budget it would be the same run.
    by_tokens = expand(copy.deepcopy(STUDY) | {"sweeps": {"scaling": {"tokens": [2000, 2561], "sizes": ["d16x1"]}}})
    assert sorted({cfg["train"]["steps"] for _, cfg, lb in by_tokens if lb["sweep"] == "scaling"}) == [8, 11]


def test_scaling_sweep_at_moe_sizes_crosses_experts_and_granularities():
    study = copy.deepcopy(STUDY)
    study["sizes"] = {"m16": {"d_model": 16, "n_layers": 1, "n_heads": 2, "moe": {"n_experts": 8, "top_k": 1}}}
    study["sweeps"] = {"scaling": {"steps": [10, 20], "experts": [2, 4], "granularities": [1, 2], "arms": ["rlrs"]}}
    got = sorted(
        (c["model"]["moe"]["n_experts"], c["model"]["moe"]["granularity"], c["train"]["steps"])
        for _, c, lb in expand(study)
        if lb["sweep"] == "scaling"
    )
    assert got == sorted((e, g, s) for e in (2, 4) for g in (1, 2) for s in (10, 20))


@pytest.mark.parametrize(
    "change,field,message",
    [
        ({"sweeps": {"scaling": {}}}, "sweeps.scaling.steps", "no token budgets for size(s) d16x1"),
        ({"sweeps": {"scaling": {"steps": [10], "tokens": [100]}}}, "sweeps.scaling", "exactly one of: steps, tokens"),
        ({"sweeps": {"scaling": {"steps": [10], "experts": [2]}}}, "sweeps.scaling.experts", "MoE sizes only"),
        ({"sweeps": {"scaling": {"steps": [10], "sizes": ["huge"]}}}, "sweeps.scaling.sizes[0]", "unknown size 'huge'"),
        ({"sweeps": {"scaling": {"steps": [0]}}}, "sweeps.scaling.steps.0", ""),
        ({"scaling": {"n_params": {"chinchilla": "embedding"}}}, "scaling.n_params.chinchilla", "active_nonembedding"),
        ({"scaling": {"holdout": 1.5}}, "scaling.holdout", ""),
        ({"scaling": {"huber_delta": 0}}, "scaling.huber_delta", ""),
    ],
)
def test_bad_scaling_input_is_refused_by_name(change, field, message):
    study = copy.deepcopy(STUDY) | change
    with pytest.raises(ConfigError) as e:
        check_study(study)
    assert e.value.field == field and message in str(e.value)


@pytest.fixture(scope="module")
def scaling_path(tmp_path_factory) -> Path:
    """The study trained for real (24 scaling runs + 1 main run, ~1 min on one core) and collected."""
    root = tmp_path_factory.mktemp("scaling")
    plan = make_plan(check_study(copy.deepcopy(STUDY)))
    write_plan(plan, root / "scal" / "plan.json")
    assert cli_submit([root / "scal" / "runs" / rid for rid in plan.run_ids], executor="debug") == 0
    path = root / "scal.duckdb"
    assert cli_collect(path, runs_root=root / "scal" / "runs", plan=root / "scal" / "plan.json") == 0
    return path


@pytest.fixture(scope="module")
def scaling_db(scaling_path):
    con = db.connect(scaling_path)
    yield con
    con.close()


def rows(con, sql):
    cur = con.execute(sql)
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r)) for r in cur.fetchall()]


def test_scaling_points_are_the_runs(scaling_db):
    con = scaling_db
    pts = rows(
        con,
        "SELECT p.*, r.params_nonembedding, r.final_eval_loss, r.steps, r.sweep AS rs FROM scaling_points p JOIN runs r USING (run_id)",
    )
    assert len(pts) == 24 and {p["law"] for p in pts} == {"chinchilla"}
    assert {p["n_kind"] for p in pts} == {"nonembedding"} and {p["family"] for p in pts} == {"dense"}
    for p in pts:
        assert p["n_params"] == p["params_nonembedding"] and p["loss"] == p["final_eval_loss"]
        assert p["tokens"] == p["steps"] * 8 * 32 and p["tokens_per_param"] == p["tokens"] / p["n_params"]
        assert p["compute"] == 6 * p["n_params"] * p["tokens"] and p["experts"] is None
        assert abs(np.log(p["fitted"] / p["loss"])) < 0.1  # the law describes its points
    for arm in ("baseline", "rlrs"):
        mine = [p for p in pts if p["arm"] == arm]
        held = [p["compute"] for p in mine if p["held_out"]]
        assert len(mine) == 12 and len(held) == 2  # holdout: 2, the largest compute
        assert min(held) >= max(p["compute"] for p in mine if not p["held_out"])


def test_scaling_fit_has_every_coefficient_with_intervals(scaling_db):
    fit = rows(scaling_db, "SELECT * FROM scaling_fit")
    for arm in ("baseline", "rlrs"):
        mine = {r["parameter"]: r for r in fit if r["arm"] == arm}
        assert {"A", "alpha", "B", "beta", "c", "m", "mu", "n", "nu", "N_opt@C=1e+13", "L_opt@C=1e+13"} <= set(mine)
        assert {r["n_points"] for r in mine.values()} == {10} and {r["n_heldout"] for r in mine.values()} == {2}
        assert {r["n_kind"] for r in mine.values()} == {"nonembedding"}
        assert {r["huber_delta"] for r in mine.values()} == {1e-3}
        for name in ("A", "alpha", "B", "beta", "c"):
            r = mine[name]
            assert r["value"] > 0 and r["ci_low"] is not None and r["ci_low"] <= r["ci_high"], r
        assert mine["mu"]["value"] == pytest.approx(-mine["alpha"]["value"], rel=1e-12)
        rmse = mine["A"]["rmse_train"]
        assert 0 < rmse < 0.05 and 0 < mine["A"]["rmse_heldout"] < 0.2
        # The fitted floor lies below every observed loss of the arm.
        assert mine["c"]["value"] < min(
            r[0] for r in scaling_db.execute(f"SELECT loss FROM scaling_points WHERE arm = '{arm}'").fetchall()
        )


def test_compute_multiplier_and_frontier_are_coherent(scaling_db):
    con = scaling_db
    cm = rows(con, "SELECT * FROM compute_multiplier ORDER BY compute")
    assert cm and {r["arm"] for r in cm} == {"rlrs"} and {r["baseline"] for r in cm} == {"baseline"}
    top = con.execute(
        "SELECT min(mx) FROM (SELECT max(compute) mx FROM scaling_points WHERE NOT held_out GROUP BY arm)"
    ).fetchall()[0][0]
    assert [r["extrapolated"] for r in cm] == [r["compute"] > top for r in cm]
    assert cm[-1]["compute"] == 1e13 and cm[-1]["extrapolated"]
    for r in cm:
        assert r["multiplier"] is not None and r["multiplier"] >= 0
        if r["ci_low"] is not None:
            assert r["ci_low"] <= r["ci_high"]
    front = rows(con, "SELECT * FROM scaling_frontier WHERE arm = 'baseline' ORDER BY compute")
    losses = [r["loss"] for r in front]
    assert len(front) == len(cm) and all(a > b for a, b in zip(losses, losses[1:]))
    for r in front:
        assert r["n_opt"] * r["d_opt"] * 6 == pytest.approx(r["compute"], rel=1e-9)
    # The multiplier at C is the ratio of compute along the two frontiers: the arm's frontier at C / m reaches
    # the baseline's loss at C.
    arm_front = {r["compute"]: r["loss"] for r in rows(con, "SELECT * FROM scaling_frontier WHERE arm = 'rlrs'")}
    assert len(arm_front) == len(front)
    # Each iso-loss line is a level of the fitted law: at its (N, D) the law gives that loss.
    fit = {r["parameter"]: r["value"] for r in rows(con, "SELECT * FROM scaling_fit WHERE arm = 'baseline'")}
    iso = rows(con, "SELECT * FROM scaling_iso_loss WHERE arm = 'baseline'")
    assert len({r["level"] for r in iso}) == 6 and len(iso) > 30
    for r in iso:
        law = fit["c"] + fit["A"] / r["n_params"] ** fit["alpha"] + fit["B"] / r["tokens"] ** fit["beta"]
        assert law == pytest.approx(r["level"], rel=1e-9)


def test_a_study_that_never_swept_lr_has_every_scaling_number_qualified(scaling_db):
    """No lr sweep ran at any size: every scaling cell fails check 2's scaling_lr, and every point, fit and
    multiplier names it (and only it: the d16x1 cells' lr_bracketed failure, one lr only, speaks for their
    main runs' comparison; the scaling points' lr is scaling_lr's)."""
    got = rows(scaling_db, "SELECT size, arm, status, message FROM health WHERE check_name = 'scaling_lr'")
    assert {(r["size"], r["arm"]) for r in got} == {(s, a) for s in SIZES for a in ("baseline", "rlrs")}
    assert {r["status"] for r in got} == {"fail"}
    why = {r["size"]: r["message"].split(", but ")[1] for r in got}
    assert why == {
        s: "lr 0.01 is the only lr that ran at this size (no lr sweep): not shown to be the best lr"
        if s == "d16x1"  # its main runs
        else "no lr sweep ran at this size: not shown to be the best lr"
        for s in SIZES
    }
    assert {r["message"].split(", but ")[0] for r in got} == {"the scaling points ran at lr 0.01"}
    assert ("lr_bracketed", "d16x1", "fail") in {
        (r[0], r[1], r[2]) for r in scaling_db.execute("SELECT check_name, size, status FROM health").fetchall()
    }
    for view in ("scaling_points", "scaling_fit", "compute_multiplier"):
        checks = {r[0] for r in scaling_db.execute(f"SELECT DISTINCT failed_checks FROM {view}").fetchall()}
        assert checks == {"scaling_lr"}, (view, checks)


def test_scaling_columns_are_documented_in_the_database(scaling_db):
    from rlrs.analysis.scaling.columns import COLUMN_DOCS

    got = {}
    for table, column, comment in scaling_db.execute(
        "SELECT table_name, column_name, comment FROM duckdb_columns() WHERE table_name IN "
        "('scaling_points', 'scaling_fit', 'compute_multiplier', 'scaling_frontier', 'scaling_iso_loss')"
    ).fetchall():
        got.setdefault(table, {})[column] = comment
    assert got == COLUMN_DOCS
    study_config = json.loads(scaling_db.execute("SELECT config FROM studies").fetchall()[0][0])
    assert study_config["scaling"]["holdout"] == 2


SCALING_FIGURES = ["scaling_observed_vs_fitted", "scaling_loss_vs_compute", "scaling_iso_loss", "compute_multiplier"]


@pytest.fixture(scope="module")
def scaling_report(scaling_path, tmp_path_factory):
    from rlrs import report

    out = tmp_path_factory.mktemp("scaling-report") / "index.html"
    built = report.write_report("scal", scaling_path, out, figures=False)
    return built, out


def test_report_shows_the_fits_and_the_multiplier(scaling_report):
    built, out = scaling_report
    assert set(SCALING_FIGURES) <= set(built.figures)
    assert not set(SCALING_FIGURES) & set(built.missing)
    html = out.read_text()
    assert "<h3>Scaling-law fits</h3>" in html and "<h3>Compute multiplier</h3>" in html
    mult = html.split("<h3>Compute multiplier</h3>")[1].split("</table>")[0]
    assert mult.count("<td>fail: scaling_lr") == 2  # the in-range and the named budget, beside each
    assert "RMSE held out" in html and "chinchilla · dense (N: nonembedding)" in json.dumps(
        built.figures, ensure_ascii=False
    )


@pytest.mark.browser
@pytest.mark.slow
def test_scaling_charts_render_in_headless_chromium(scaling_report, tmp_path):
    from test_report import headless, rendered_status

    built, out = scaling_report
    status = rendered_status(headless(out, tmp_path / "profile", "--dump-dom").stdout)
    assert status["done"] == "yes" and status["errors"] == "0", status["text"]
    assert status["rendered"] == status["charts"] == str(len(built.figures))


def test_shipped_scaling_cpu_study_and_its_plan(capsys):
    """scaling-cpu: per family (dense, MoE 8x top-1 capacity 1.25) and arm, 4 sizes x 4 budgets, on
    study-cpu's settings key for key, so that its searches, selections, main runs and baseline ladder are
    study-cpu's runs (reuse_runs_from), and the baseline's scaling points at the shared sizes up to 4000
    steps are its ladder (8000 steps, 4x its length, is past the ladder's 2x: trained here)."""
    from rlrs.study import load_study
    from rlrs.study.estimate import estimate

    from _cli_fixtures import cli_plan

    configs = Path(__file__).resolve().parent.parent / "workflow" / "configs"
    path, cpu_path = configs / "scaling-cpu.yaml", configs / "study-cpu.yaml"
    study, cpu = load_study(path), load_study(cpu_path)
    assert study["reuse_runs_from"] == ["study-cpu"]
    for key in ("executor", "defaults", "arms", "seeds", "selection_seeds", "tune"):
        assert study[key] == cpu[key], key
    assert {k: study["sizes"][k] for k in cpu["sizes"]} == cpu["sizes"]
    assert study["sweeps"]["lr"] == cpu["sweeps"]["lr"]
    assert {k: v for k, v in study["sweeps"]["ladder"].items() if k != "sizes"} == cpu["sweeps"]["ladder"]
    # Both expanded as `rlrs plan` does (at the lrs stage 1 chose where it has run, else at each grid's centre).
    plan, cpu_plan = estimate(study, path).plan, estimate(cpu, cpu_path).plan
    cpu_sweeps: dict[str, set] = {}
    for r in cpu_plan.runs:
        cpu_sweeps.setdefault(r["run_id"], set()).add(r["sweep"])
    cells = {}
    for r in plan.runs:
        if r["sweep"] != tags.SCALING:
            if r["size"] in cpu["sizes"]:  # tune, selection, main, ladder at study-cpu's sizes: its runs
                assert r["run_id"] in cpu_plan.configs, r
            else:  # the sizes study-cpu has not: their own lr selection, trained here
                assert r["sweep"] == "lr" and r["run_id"] not in cpu_plan.configs, r
            continue
        cfg = plan.configs[r["run_id"]]
        moe = cfg["model"]["moe"]
        fam = "moe" if moe else "dense"
        assert moe is None or (moe["n_experts"], moe["top_k"], moe["capacity_factor"]) == (8, 1, 1.25)
        steps = cfg["train"]["steps"]
        cells.setdefault((fam, r["arm"]), set()).add((r["size"], steps))
        shared = r["size"] in cpu["sizes"] and ((r["arm"] == "baseline" and steps <= 4000) or steps == 2000)
        assert (r["run_id"] in cpu_plan.configs) == shared, r
        if shared:  # the scaling tag is a label, not part of the run id
            assert cpu_sweeps[r["run_id"]] & {"ladder", "main"}
    assert set(cells) == {(f, a) for f in ("dense", "moe") for a in ("baseline", "rlrs")}
    for got in cells.values():
        assert len({s for s, _ in got}) == 4 and {t for _, t in got} == {1000, 2000, 4000, 8000} and len(got) == 16
    assert cli_plan(path) == 0
    assert "scaling sweep: 64 unique runs" in capsys.readouterr().out


def test_a_reader_of_a_fresh_database_reads_the_stored_fits(scaling_path, tmp_path):
    """collect fits; the report (analysis.compute on a fresh database) reads the stored rows, not a refit."""
    import shutil

    from rlrs import analysis

    path = tmp_path / "copy.duckdb"
    shutil.copy(scaling_path, path)
    con = db.connect(path, read_only=False)
    assert not analysis.is_stale(con)
    con.execute("UPDATE analysis_scaling_fit SET value = 42.0 WHERE parameter = 'alpha' AND arm = 'rlrs'")
    frames = analysis.compute(con, "scal")
    alpha = frames["scaling_fit"].filter((frames["scaling_fit"]["parameter"] == "alpha"))
    assert sorted(alpha["value"].to_list())[-1] == 42.0
    # A stale database (runs ingested after the views) is refitted: the stored value is not used.
    con.execute("UPDATE analysis_meta SET materialized_at = materialized_at - INTERVAL 1 HOUR")
    assert analysis.is_stale(con)
    refit = analysis.compute(con, "scal")["scaling_fit"]
    assert 42.0 not in refit.filter(refit["parameter"] == "alpha")["value"].to_list()
    con.close()
