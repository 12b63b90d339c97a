"""Cross-study run reuse (rlrs.study.reuse) for real: a tiny study A trains,
a study B with `reuse_runs_from: [A]` copies the runs the two share (their
run ids are content hashes) instead of training them, on every path that
trains runs (Snakemake's train rule through `rlrs submit`, `rlrs tune`,
`rlrs select`), trains its own, and collects both into a correct database;
a failed, unfinished, corrupt or different run of A is trained again."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import duckdb
import pytest
import yaml
from test_workflow import snakemake

from rlrs import config as C
from rlrs import rundir
from rlrs.errors import NAME_PATTERN, ConfigError
from rlrs.launch import submit
from rlrs.study import check_study, load_study, make_plan, tuned_plan
from rlrs.study import reuse as R
from rlrs.study.validate import _schema

from _cli_fixtures import cli_collect, cli_plan

REPO = Path(__file__).resolve().parent.parent

# Study A: the smoke study (staged, one tiny size, 30-step runs on the byte-level
# Austen corpus) with a tune block (the baseline's global search, 5 runs), in-process.
A = yaml.safe_load((REPO / "workflow" / "configs" / "smoke.yaml").read_text()) | {
    "study": "ra",
    "executor": {"kind": "debug", "timeout_min": 5},
    "tune": {
        "sizes": ["tiny"],
        "arms": {"baseline": "global"},
        "max_passes": 1,
        "max_runs": 5,
        "parameters": ["lr", "init_scale"],
        "seed": 50,
    },
}


def study_b() -> dict:
    """A's settings, one more size, a scaling sweep, and reuse_runs_from: [ra]."""
    b = copy.deepcopy(A) | {"study": "rb", "reuse_runs_from": ["ra"]}
    b["sizes"]["wide"] = {"d_model": 24, "n_layers": 1, "n_heads": 2}
    b["sweeps"]["scaling"] = {"steps": [15, 30], "seeds": [0]}
    return b


def files(run_dir: Path) -> dict[str, bytes]:
    return {n: (run_dir / n).read_bytes() for n in (rundir.METRICS, rundir.SUMMARY) if (run_dir / n).exists()}


@pytest.fixture(scope="module")
def two_studies(tmp_path_factory):
    """A, then B, each run by `snakemake -c2` end to end (tune, select, train, collect, report)."""
    work = tmp_path_factory.mktemp("reuse")
    env = {"RLRS_RESULTS": str(work / "results"), "RLRS_REPORTS": str(work / "reports")}
    out = {}
    for st in (A, study_b()):
        path = work / f"{st['study']}.yaml"
        path.write_text(yaml.safe_dump(st))
        before = {p: p.stat().st_mtime_ns for p in (work / "results").rglob("*") if p.is_file()}
        done = snakemake(work, "-c2", "--configfile", str(path), timeout=900, **env)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        out[st["study"]] = {"path": path, "before": before, "log": done.stdout + done.stderr}
    return work, env, out


def test_b_copies_the_shared_runs_and_trains_its_own(two_studies, monkeypatch):
    work, env, out = two_studies
    results = work / "results"
    monkeypatch.setenv("RLRS_RESULTS", str(results))
    plan_a = tuned_plan(load_study(out["ra"]["path"]), out["ra"]["path"])
    plan_b = tuned_plan(load_study(out["rb"]["path"]), out["rb"]["path"])
    shared = set(plan_a.configs) & set(plan_b.configs)
    own = set(plan_b.configs) - shared
    sweeps = {r["sweep"] for r in plan_b.runs if r["run_id"] in shared}
    # The search, the selection at the shared size, main, ladder, and the scaling points that are main runs
    assert {"tune", "lr", "main", "ladder", "scaling"} <= sweeps and len(shared) >= 20 and len(own) >= 15
    for rid in shared:
        a, b = results / "ra" / "runs" / rid, results / "rb" / "runs" / rid
        # Byte-identical metrics and summary (its started_at, wall time and host are A's): nothing trained.
        assert files(b) == files(a) and (b / rundir.METRICS).exists()
        provenance = json.loads((b / rundir.REUSED).read_text())
        assert provenance["from_study"] == provenance["trained_in"] == "ra"
        assert provenance["from_run_dir"] == f"ra/runs/{rid}"
        cfg_a, cfg_b = (json.loads((d / rundir.CONFIG).read_text()) for d in (a, b))
        assert C.identity(cfg_b) == C.identity(cfg_a) and cfg_b["run_id"] == rid
        # B's labels (the requester's: the search's, the selection's or the plan's), A's settings
        assert cfg_b["meta"] == {**cfg_a["meta"], "study": "rb"}
        if cfg_b["meta"]["sweep"] != "tune":  # a search labels its runs itself (tags without `step`)
            assert cfg_b["meta"] == plan_b.configs[rid]["meta"]
        assert not (b / "submitit").exists() and not (b / rundir.CHECKPOINT).exists()  # no job for it
    for rid in own:
        b = results / "rb" / "runs" / rid
        assert json.loads((b / rundir.SUMMARY).read_text())["status"] == "completed"
        assert not (b / rundir.REUSED).exists() and not (results / "ra" / "runs" / rid).exists()
    # A's files were left alone: none changed, none added.
    before_a = {p: t for p, t in out["rb"]["before"].items() if p.is_relative_to(results / "ra")}
    assert {p: p.stat().st_mtime_ns for p in (results / "ra").rglob("*") if p.is_file()} == before_a


def test_a_replayed_search_and_selection_decide_the_same_and_train_nothing(two_studies):
    work, _, out = two_studies
    results = work / "results"
    ta, tb = (json.loads((results / s / "tune" / "tiny.baseline.json").read_text()) for s in ("ra", "rb"))
    assert tb["trajectory"] == ta["trajectory"] and tb["final"] == ta["final"] and tb["runs_spent"] == 5
    for arm in ("baseline", "rlrs"):
        sa, sb = (json.loads((results / s / "select" / f"tiny.{arm}.json").read_text()) for s in ("ra", "rb"))
        assert sb["points"] == sa["points"] and sb["chosen_lr"] == sa["chosen_lr"]
    tune_log = (results / "rb" / "logs" / "tune.log").read_text()
    assert tune_log.count("in study ra: reused (copied, not trained)") == 5
    # Every selection run at the shared size is copied; the new size's are trained.
    select_log = (results / "rb" / "logs" / "select.log").read_text()
    for size, copied in (("tiny", True), ("wide", False)):
        for arm in ("baseline", "rlrs"):
            doc = json.loads((results / "rb" / "select" / f"{size}.{arm}.json").read_text())
            for rid in (r for p in doc["points"] for r in p["runs"].values()):
                assert (f"[{rid}] completed in study ra: reused (copied, not trained)" in select_log) == copied
                assert (results / "rb" / "runs" / rid / rundir.REUSED).exists() == copied


def test_b_database_names_the_reused_runs(two_studies, monkeypatch):
    work, _, out = two_studies
    results = work / "results"
    monkeypatch.setenv("RLRS_RESULTS", str(results))
    plan_b = tuned_plan(load_study(out["rb"]["path"]), out["rb"]["path"])
    reused = {rid for rid in plan_b.configs if (results / "rb" / "runs" / rid / rundir.REUSED).exists()}
    con = duckdb.connect(str(results / "rb" / "rlrs.duckdb"), read_only=True)
    got = dict(con.execute("SELECT run_id, reused_from FROM runs").fetchall())
    labels = con.execute("SELECT DISTINCT study FROM runs").fetchall()
    steps = con.execute(
        "SELECT count(*) FROM metrics m JOIN runs r USING (run_id) WHERE r.reused_from = 'ra'"
    ).fetchone()[0]
    con.close()
    assert set(got) == set(plan_b.configs) and labels == [("rb",)]
    assert {r for r, src in got.items() if src == "ra"} == reused and all(got[r] is None for r in set(got) - reused)
    assert steps == sum(plan_b.configs[r]["train"]["steps"] for r in reused)
    assert (work / "reports" / "rb" / "index.html").exists()


def test_plan_counts_the_reused_runs_as_free(two_studies, monkeypatch, capsys):
    work, _, out = two_studies
    monkeypatch.setenv("RLRS_RESULTS", str(work / "results"))
    plan_b = tuned_plan(load_study(out["rb"]["path"]), out["rb"]["path"])
    shared = [r for r in plan_b.configs if (work / "results" / "ra" / "runs" / r).is_dir()]
    assert cli_plan(out["rb"]["path"]) == 0
    text = capsys.readouterr().out
    assert f"  reused: finished there now{'':26}{len(shared):>6} runs" in text
    assert f"  new: trained by this study{'':26}{len(plan_b.configs) - len(shared):>6} runs" in text


# ------------------------------------------------------- what is not reused


RUN = {
    "model": {"seq_len": 32, "d_model": 16, "n_layers": 1, "n_heads": 2},
    "optim": {"lr": 0.01},
    "data": {"corpus": "austen", "eval_tokens": 2048},
    "train": {"steps": 12, "batch_size": 4, "eval_interval": 6, "checkpoint_interval": 6, "log_interval": 6},
}
SETTINGS = {"kind": "debug", "timeout_min": 5, "runs_per_job": 1, "tasks_per_node": 1, "nodes": 1}


def configs(n: int) -> dict[str, dict]:
    out = {}
    for seed in range(n):
        cfg = C.resolve({**copy.deepcopy(RUN), "seed": seed})
        cfg["meta"] = {"study": "src", "size": "s", "arm": "baseline", "sweep": "main", "tags": {}}
        out[C.run_id(cfg)] = cfg
    return out


def _truncate(d: Path) -> None:
    data = (d / rundir.METRICS).read_bytes()
    (d / rundir.METRICS).write_bytes(data[: len(data) // 2])


def _fail(d: Path) -> None:
    s = json.loads((d / rundir.SUMMARY).read_text())
    (d / rundir.SUMMARY).write_text(json.dumps(s | {"status": "failed", "final_eval_loss": None}))


def _unfinish(d: Path) -> None:
    (d / rundir.SUMMARY).unlink()


def _other_config(d: Path) -> None:  # the run id kept, the settings changed
    cfg = json.loads((d / rundir.CONFIG).read_text())
    cfg["optim"]["lr"] = 0.02
    (d / rundir.CONFIG).write_text(json.dumps(cfg))


def _short(d: Path) -> None:
    s = json.loads((d / rundir.SUMMARY).read_text())
    (d / rundir.SUMMARY).write_text(json.dumps(s | {"steps_done": 6}))


def test_a_failed_unfinished_corrupt_or_different_run_is_trained_not_reused(tmp_path, capsys):
    spoil = {"truncated": _truncate, "failed": _fail, "unfinished": _unfinish, "other": _other_config, "short": _short}
    cfgs = configs(1 + len(spoil))
    ids = list(cfgs)
    src = tmp_path / "src" / "runs"
    assert submit([src / r for r in ids], cfgs, SETTINGS, "debug") == 0
    reasons = {}
    for rid, (name, fn) in zip(ids[1:], spoil.items()):
        fn(src / rid)
        reasons[name] = R.check("src", src / rid, rid, cfgs[rid])[1]
    assert reasons == {
        "truncated": "completed, but metrics.parquet is missing or truncated",
        "failed": "status 'failed' (reused: completed, diverged)",
        "unfinished": "no readable summary.json (not finished)",
        "other": "config.json is not this run's (its run id or resolved settings differ)",
        "short": "completed after 6 of 12 steps",
    }
    dst = tmp_path / "dst" / "runs"
    capsys.readouterr()
    assert submit([dst / r for r in ids], cfgs, SETTINGS, "debug", reuse_from=["nothere", "src"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("reused (copied, not trained)") == 1
    assert (dst / ids[0] / rundir.REUSED).exists() and files(dst / ids[0]) == files(src / ids[0])
    for rid in ids[1:]:
        summary = json.loads((dst / rid / rundir.SUMMARY).read_text())
        assert summary["status"] == "completed" and not (dst / rid / rundir.REUSED).exists()
        assert f"[{rid}] completed: final eval loss" in printed  # trained here: its job's outcome
    # The copy's database row says where it came from; a trained run's says nothing.
    path = tmp_path / "dst.duckdb"
    assert cli_collect(path, runs_root=dst, study="dst") == 0
    con = duckdb.connect(str(path), read_only=True)
    got = dict(con.execute("SELECT run_id, reused_from FROM runs").fetchall())
    con.close()
    assert got == {r: ("src" if r == ids[0] else None) for r in ids}


def test_a_copy_replaces_an_interrupted_attempt_and_a_diverged_run_is_reused(tmp_path):
    cfgs = configs(2)
    ids = list(cfgs)
    src = tmp_path / "src" / "runs"
    assert submit([src / r for r in ids], cfgs, SETTINGS, "debug") == 0
    # A diverged result is a result: reused as it stands (no metrics needed).
    s = json.loads((src / ids[1] / rundir.SUMMARY).read_text())
    (src / ids[1] / rundir.SUMMARY).write_text(json.dumps(s | {"status": "diverged", "final_eval_loss": None}))
    (src / ids[1] / rundir.METRICS).unlink()
    dst = tmp_path / "dst" / "runs"
    for rid in ids:  # interrupted, failed attempts of B's own
        (dst / rid).mkdir(parents=True, exist_ok=True)
        for name in (rundir.CHECKPOINT, rundir.FAILURE, rundir.METRICS):
            (dst / rid / name).write_bytes(b"x")
    assert submit([dst / r for r in ids], cfgs, SETTINGS, "debug", reuse_from=["src"]) == 0
    assert sorted(p.name for p in (dst / ids[0]).iterdir()) == sorted(
        [rundir.CONFIG, rundir.METRICS, rundir.SUMMARY, rundir.REUSED]
    )
    assert sorted(p.name for p in (dst / ids[1]).iterdir()) == sorted([rundir.CONFIG, rundir.SUMMARY, rundir.REUSED])
    assert rundir.finished_summary(dst / ids[1])["status"] == "diverged"
    assert files(dst / ids[0]) == files(src / ids[0])
    assert not list(dst.rglob("*.tmp"))  # every file written atomically, no temp file left


# ------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    "value, field, message",
    [
        ("ra", "reuse_runs_from", "'ra' has the wrong type; expected array"),
        (["a/b"], "reuse_runs_from.0", "bad name 'a/b'; allowed: letters, digits, '_', '.', '-'"),
        ([], "reuse_runs_from", "[] is too short; give at least 1 item(s)"),
        (["ra", "ra"], "reuse_runs_from", "names an item twice"),
        (["rb"], "reuse_runs_from[0]", "'rb' is this study itself; allowed: the names of other studies"),
    ],
)
def test_bad_reuse_runs_from_is_refused_by_name(value, field, message, tmp_path, capsys):
    study = study_b() | {"reuse_runs_from": value}
    with pytest.raises(ConfigError) as e:
        check_study(study)
    assert e.value.field == field and message in str(e.value)
    path = tmp_path / "rb.yaml"
    path.write_text(yaml.safe_dump(study))
    assert cli_plan(path) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{field}: " in err and "Traceback" not in err


def test_the_study_schema_names_use_the_one_name_pattern():
    assert _schema()["$defs"]["name"]["pattern"] == NAME_PATTERN


def test_plan_after_a_study_not_reused_from_is_refused(tmp_path, capsys):
    a, b = tmp_path / "other.yaml", tmp_path / "rb.yaml"
    a.write_text(yaml.safe_dump(copy.deepcopy(A) | {"study": "other"}))
    b.write_text(yaml.safe_dump(study_b()))
    from rlrs.cli import main

    assert main(["plan", str(b), "--after", str(a)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--after: " in err and "(reuse_runs_from: ra)" in err


def test_plan_after_counts_what_the_other_study_plans_as_free(tmp_path, monkeypatch, capsys):
    """Before A has run: with --after A, B's runs that A plans (its search, its
    selection cells, main, ladder) cost nothing; only B's own are new."""
    monkeypatch.setenv("RLRS_RESULTS", str(tmp_path / "results"))
    a, b = tmp_path / "ra.yaml", tmp_path / "rb.yaml"
    a.write_text(yaml.safe_dump(A))
    b.write_text(yaml.safe_dump(study_b()))
    from rlrs.cli import main
    from rlrs.study.estimate import estimate, load_after

    est = estimate(load_study(b), b, after=load_after(load_study(b), [a]))
    first = estimate(load_study(a), a)
    assert est.reused == set() and est.shared and est.after == ["ra"]
    assert {k for k in est.shared if not k.startswith(("tune:", "select"))} == set(first.plan.configs) & set(
        est.plan.configs
    )
    # The search (5 runs at most) and the tiny cells (3 + 1 runs each) are A's; the wide cells are B's.
    assert sum(k.startswith("tune:") for k in est.shared) == 5
    assert {k.split(":")[1] for k in est.shared if k.startswith("select")} == {"tiny.baseline", "tiny.rlrs"}
    assert all(est.trains(k) for k in est.costs if k.startswith("select") and ":wide." in k)
    assert main(["plan", str(b), "--after", str(a)]) == 0
    text = capsys.readouterr().out
    new = [k for k in est.costs if est.trains(k)]
    assert f"{len(est.shared):>6} runs" in text.split("shared: planned by ra (runs first)")[1].splitlines()[0]
    assert f"{len(new):>6} runs" in text.split("new: trained by this study")[1].splitlines()[0]


def test_plan_of_the_shipped_scaling_study_reuses_the_cpu_study_tune_runs(monkeypatch, capsys):
    """results/study-cpu/ holds the finished runs of its finished searches: scaling-cpu's searches ask for
    the same run ids, so `rlrs plan` counts them reused (a search still running is not replayed: its
    later decisions are not known yet)."""
    monkeypatch.chdir(REPO)
    monkeypatch.delenv("RLRS_RESULTS", raising=False)
    from rlrs.study.estimate import estimate

    path = REPO / "workflow" / "configs" / "scaling-cpu.yaml"
    finished = [json.loads(f.read_text()) for f in (REPO / "results" / "study-cpu" / "tune").glob("*.json")]
    runs = REPO / "results" / "study-cpu" / "runs"
    tune_runs = [
        r for doc in finished if doc["status"] == "done" for r in doc["runs"] if rundir.finished_summary(runs / r)
    ]
    est = estimate(load_study(path), path)
    assert len(tune_runs) >= 70 and len(est.reused) >= len(tune_runs)
    assert cli_plan(path) == 0
    text = capsys.readouterr().out
    assert f"  reused: finished there now{'':26}{len(est.reused):>6} runs" in text


def test_copy_finished_without_sources_does_nothing(tmp_path):
    rid, cfg = next(iter(configs(1).items()))
    assert R.copy_finished(tmp_path / "x" / "runs" / rid, cfg, []) is None
    assert not (tmp_path / "x").exists()
