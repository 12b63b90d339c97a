"""Staged studies (docs/design.md, Stages): the study keys and their checks,
stage 1 (rlrs select: lr selection with automatic bracketing, real tiny runs
through the debug executor), stage 2 at the chosen lrs, lr_selection in the
database, and the pairing of the arms by seed."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import polars as pl
import pytest
import torch
import yaml

from rlrs import analysis, db, report, tags
from rlrs.cli import main as rlrs_main
from rlrs.data import train_batch
from rlrs.errors import ConfigError
from rlrs.study import check_study, expand, load_study, make_plan, selection, tuned_plan, write_plan
from rlrs.study.selection import SelectState, cells
from rlrs.train import Trainer

from _data_fixtures import austen_corpus

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "workflow" / "configs"


def staged() -> dict:
    """The smoke study (staged) as a dict."""
    return yaml.safe_load((CONFIGS / "smoke.yaml").read_text()) | {"study": "staged"}


def _with(**fields):
    def mutate(s):
        for path, value in fields.items():
            *parents, key = path.split("__")
            node = s
            for p in parents:
                node = node.setdefault(p, {})
            node[key] = value
        return s

    return mutate


BAD = {
    "reported overlap selection": (
        _with(seeds=[0, 1, 2], selection_seeds=[2, 7]),
        "seeds: the reported seeds [0, 1, 2] overlap the selection seeds [2, 7] (both hold [2]): "
        "a seed that chose the lr must not report the result",
    ),
    "reported overlap tuning": (
        _with(tune={"sizes": ["tiny"], "arms": {"baseline": "global"}, "seed": 1, "max_runs": 5}),
        "seeds: the reported seeds [0, 1, 2] overlap the tuning seeds [1] (tune.seed): "
        "a seed that tuned the settings must not report the result",
    ),
    "too few reported": (
        _with(seeds=[0, 1]),
        "seeds: 2 reported seed(s) [0, 1]; a staged study needs >= 3 "
        "(min_reported_seeds, default 5, at least 3: no interval below 3 seeds)",
    ),
    "default of five": (
        lambda s: (s.pop("min_reported_seeds"), s)[1],
        "seeds: 3 reported seed(s) [0, 1, 2]; a staged study needs >= 5 "
        "(min_reported_seeds, default 5, at least 3: no interval below 3 seeds)",
    ),
    "ladder outside reported": (
        _with(sweeps__ladder__seeds=[0, 1, 9]),
        "sweeps.ladder.seeds: [9] not among the reported seeds [0, 1, 2]; the ladder runs on reported seeds",
    ),
    "ladder too few": (
        _with(sweeps__ladder__seeds=[0, 1]),
        "sweeps.ladder.seeds: 2 seed(s); the ladder needs >= 3 per length",
    ),
    "no lr grid": (
        lambda s: (s["sweeps"].pop("lr"), s)[1],
        "sweeps.lr: a staged study chooses its lrs on an lr grid: give sweeps.lr.factors",
    ),
    "tune without budget": (
        _with(seeds=[1, 2, 3], tune={"sizes": ["tiny"], "arms": {"baseline": "global", "rlrs": "relative"}}),
        "tune.max_runs: a staged study's searches need one run budget for every arm (e.g. max_runs: 40): "
        "a search that stops at max_passes may stop one arm unconverged and let another converge",
    ),
    "bracket factor": (
        _with(sweeps__lr__bracket={"factor": 1.0}),
        "sweeps.lr.bracket.factor: 1.0 is not valid: expected number > 1",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_staged_study_is_refused_naming_both_lists(case):
    mutate, message = BAD[case]
    with pytest.raises(ConfigError) as e:
        check_study(mutate(staged()))
    assert str(e.value) == message


def test_stage_two_runs_at_the_chosen_lrs_on_the_reported_seeds():
    study = staged()
    study["sweeps"] |= {"removal": {"arm": "rlrs", "components": ["embedding"]}, "contribution": {"arm": "rlrs"}}
    study = check_study(study)
    (base, rlrs) = cells(study)
    assert (base.key, base.grid, base.factor, base.max_extra_points) == ("tiny.baseline", [0.024, 0.048, 0.096], 2.0, 1)
    chosen = {("tiny", "baseline"): 0.096, ("tiny", "rlrs"): 0.024}
    state = SelectState(chosen=chosen, runs=[(base, lr, 100) for lr in base.grid])
    requests = expand(study, select_state=state)
    seen = {(lb["sweep"], lb["arm"], cfg["seed"], cfg["optim"]["lr"], cfg["train"]["steps"]) for _, cfg, lb in requests}
    assert {r for r in seen if r[0] == "lr"} == {("lr", "baseline", 100, lr, 30) for lr in base.grid}
    assert {r for r in seen if r[0] == "main"} == {
        ("main", arm, s, lr, 30) for arm, lr in (("baseline", 0.096), ("rlrs", 0.024)) for s in (0, 1, 2)
    }
    # the baseline's ladder at the baseline's chosen lr, ladder seeds = the first 3 reported
    assert {r for r in seen if r[0] == "ladder"} == {
        ("ladder", "baseline", s, 0.096, n) for s in (0, 1, 2) for n in (15, 30)
    }
    assert all(
        lb["tags"] == tags.select(cfg["optim"]["lr"], cfg["optim"]["lr"] / 0.048)
        for _, cfg, lb in requests
        if lb["sweep"] == "lr"
    )
    # ablations at the chosen lr of the arm they run (a contribution: its `into` arm, the baseline)
    assert {r for r in seen if r[0] == "removal"} == {("removal", "rlrs", s, 0.024, 30) for s in (0, 1, 2)}
    assert {r[1:] for r in seen if r[0] == "contribution"} == {("baseline", s, 0.096, 30) for s in (0, 1, 2)}
    # a size whose selection is unfinished is left out of stage 2
    assert [lb for _, _, lb in expand(study, select_state=SelectState(pending={"tiny"}))] == []


def test_an_unstaged_study_expands_as_before():
    """study-cpu-v1 (no selection_seeds) is not staged: its committed runs re-resolve (tests/test_run_ids.py);
    here its plan keeps its lr sweep on the reported seeds."""
    plan = make_plan(load_study(CONFIGS / "study-cpu-v1.yaml"), CONFIGS / "study-cpu-v1.yaml")
    lr_runs = [r for r in plan.runs if r["sweep"] == "lr"]
    assert lr_runs and all("stage" not in r["tags"] for r in lr_runs)


def test_seed_s_gives_both_arms_the_same_init_and_batches(austen_corpus, tmp_path):
    """The main runs of seed s (baseline and RLRS, at different chosen lrs) start from the same
    weights and see the same batches; another seed does not."""
    study = load_study(CONFIGS / "demo.yaml")
    chosen = {(c.size, c.arm): c.centre_lr * (2.0 if c.arm == "rlrs" else 0.5) for c in cells(study)}
    main = {
        (lb["size"], lb["arm"], cfg["seed"]): cfg
        for _, cfg, lb in expand(study, select_state=SelectState(chosen=chosen))
        if lb["sweep"] == "main"
    }
    for size in ("dense-32", "moe-32"):
        base, rlrs, other = (main[(size, "baseline", 1)], main[(size, "rlrs", 1)], main[(size, "rlrs", 2)])
        assert base["optim"]["lr"] != rlrs["optim"]["lr"] and base["schedule"] != rlrs["schedule"]
        t = {
            k: Trainer(c, tmp_path / k, executor=None, job_id=None) for k, c in (("b", base), ("r", rlrs), ("o", other))
        }
        wb, wr, wo = (t[k].model.state_dict() for k in "bro")
        assert list(wb) == list(wr)
        assert all(torch.equal(wb[k], wr[k]) for k in wb)
        assert not all(torch.equal(wb[k], wo[k]) for k in wb)
        for step in (0, 1, 57):
            xb, yb = train_batch(t["b"].corpus, 16, 128, base["seed"], step)
            xr, yr = train_batch(t["r"].corpus, 16, 128, rlrs["seed"], step)
            xo, _ = train_batch(t["o"].corpus, 16, 128, other["seed"], step)
            assert torch.equal(xb, xr) and torch.equal(yb, yr) and not torch.equal(xb, xo)


BRACKET = {
    "study": "bracket",
    "executor": {"kind": "debug", "timeout_min": 5},
    "defaults": {
        "model": {"seq_len": 32, "init_scale": 0.15},
        "schedule": {"warmup_fraction": 0.05, "final_lr_fraction": 0.0444},
        "data": {"corpus": "austen", "tokenizer": "bytes", "eval_tokens": 2048},
        "train": {"steps": 30, "batch_size": 8, "eval_interval": 10, "checkpoint_interval": 10, "threads": 1},
    },
    # one size centred below its best lr (measured: 0.096 of 0.024 .. 0.192), one far below it
    "sizes": {
        "near": {"d_model": 16, "n_layers": 1, "n_heads": 2, "overrides": {"optim": {"lr": 0.048}}},
        "far": {"d_model": 16, "n_layers": 1, "n_heads": 2, "overrides": {"optim": {"lr": 0.0005}}},
    },
    "arms": {"baseline": {}},
    "selection_seeds": [100],
    "seeds": [0, 1, 2],
    "min_reported_seeds": 3,
    "sweeps": {"main": {"seeds": [0]}, "lr": {"factors": [0.5, 2.0], "bracket": {"max_extra_points": 2}}},
}


def selected(study: dict, tmp_path: Path, monkeypatch, capsys) -> tuple[Path, str]:
    """The study written under tmp_path (results there too) and run through
    `rlrs select`: (its file, what the command printed)."""
    monkeypatch.setenv("RLRS_RESULTS", str(tmp_path / "results"))
    path = tmp_path / f"{study['study']}.yaml"
    path.write_text(yaml.safe_dump(study))
    assert rlrs_main(["select", str(path)]) == 0
    return path, capsys.readouterr().out


def test_an_edge_best_lr_is_bracketed_and_a_capped_cell_is_marked_unbracketed(
    austen_corpus, tmp_path, monkeypatch, capsys
):
    path, out = selected(BRACKET, tmp_path, monkeypatch, capsys)
    assert "[select near.baseline] round 2: lr 0.192" in out
    assert "select: 2 cell(s) done; unbracketed (cap reached): far.baseline" in out
    folder = tmp_path / "results" / "bracket" / "select"
    near = json.loads((folder / "near.baseline.json").read_text())
    far = json.loads((folder / "far.baseline.json").read_text())
    # near: the first grid's best is its high edge (0.096); one point beyond (0.192) is worse: interior
    losses = {p["lr"]: p["losses"]["100"] for p in near["points"]}
    assert sorted(losses) == [0.024, 0.048, 0.096, 0.192]
    assert min(losses, key=losses.get) == 0.096 == near["chosen_lr"]
    first = {lr: v for lr, v in losses.items() if lr <= 0.096}
    assert min(first, key=first.get) == max(first)  # at the first grid's edge
    assert (near["status"], near["bracketed"], near["cap_reached"], near["n_extra"]) == ("done", True, False, 1)
    assert (far["bracketed"], far["cap_reached"], far["n_extra"], far["chosen_lr"]) == (False, True, 2, 0.004)
    assert [p["lr"] for p in far["points"]] == [0.00025, 0.0005, 0.001, 0.002, 0.004]

    # stage 2 at the chosen lrs; a second `rlrs select` trains nothing and decides the same
    plan = tuned_plan(load_study(path), path)
    assert sorted((r["size"], plan.configs[r["run_id"]]["optim"]["lr"]) for r in plan.runs if r["sweep"] == "main") == [
        ("far", 0.004),
        ("near", 0.096),
    ]
    assert rlrs_main(["select", str(path)]) == 0
    assert "[select near.baseline] already done: lr 0.096" in capsys.readouterr().out

    # collect: the lr_selection table marks the capped cell unbracketed
    plan_json = tmp_path / "results" / "bracket" / "plan.json"
    from rlrs.study import write_plan

    write_plan(plan, plan_json)
    dbp = tmp_path / "results" / "bracket" / "rlrs.duckdb"
    db.ingest(dbp, [], plan=plan_json, select=db.select_results(plan_json))
    con = db.connect(dbp)
    try:
        rows = con.execute(
            "SELECT size, arm, centre_lr, chosen_lr, bracketed, cap_reached, n_extra, n_points, factor, "
            "selection_seeds, ranked_on FROM lr_selection ORDER BY size"
        ).fetchall()
    finally:
        con.close()
    assert rows == [
        ("far", "baseline", 0.0005, 0.004, False, True, 2, 5, 2.0, "[100]", "[100]"),
        ("near", "baseline", 0.048, 0.096, True, False, 1, 4, 2.0, "[100]", "[100]"),
    ]


# One size that trains, one whose lr is absurd: every run of its grid diverges,
# and so does the one point bracketing adds below it.
DIVERGES = copy.deepcopy(BRACKET) | {
    "study": "diverges",
    "sizes": {
        "ok": {"d_model": 16, "n_layers": 1, "n_heads": 2, "overrides": {"optim": {"lr": 0.048}}},
        "blowup": {"d_model": 16, "n_layers": 1, "n_heads": 2, "overrides": {"optim": {"lr": 1.0e6}}},
    },
    "sweeps": {"lr": {"factors": [0.5, 2.0], "bracket": {"max_extra_points": 1}}},
}


def test_a_cell_where_every_lr_diverges_fails_and_its_size_is_not_waited_for(
    austen_corpus, tmp_path, monkeypatch, capsys
):
    path, out = selected(DIVERGES, tmp_path, monkeypatch, capsys)
    assert "[select blowup.baseline] round 2: lr 250000" in out  # walked down once (the cap), then stopped
    assert "select: 2 cell(s) done; FAILED (no lr trained; their sizes are not measured): blowup.baseline" in out
    folder = tmp_path / "results" / "diverges" / "select"
    doc = json.loads((folder / "blowup.baseline.json").read_text())
    assert [p["lr"] for p in doc["points"]] == [250000.0, 500000.0, 1000000.0, 2000000.0]
    assert all(v is None for p in doc["points"] for v in p["losses"].values())  # every run diverged
    assert (doc["status"], doc["failed"], doc["chosen_lr"], doc["bracketed"]) == ("done", True, None, False)
    assert doc["note"] == "every lr diverged, down to 250000 (1 extra point(s), cap 1)"
    assert json.loads((folder / "ok.baseline.json").read_text())["failed"] is False

    # Stage 2 measures the size that chose an lr and leaves the failed one out: not pending, failed.
    study = load_study(path)
    plan = tuned_plan(study, path)
    assert sorted({r["size"] for r in plan.runs if r["sweep"] == "main"}) == ["ok"]
    state = selection.load_state(study)
    assert state.pending == set() and state.failed_sizes == {"blowup"}
    why = "every lr diverged, down to 250000 (1 extra point(s), cap 1)"
    assert rlrs_main(["status", str(path)]) == 0
    status = capsys.readouterr().out
    assert "measured only once their lr selection is done" not in status
    assert f"diverges: blowup is not measured: the lr selection of blowup.baseline failed ({why})" in status
    assert rlrs_main(["plan", str(path)]) == 0
    planned = capsys.readouterr().out
    assert "not yet known" not in planned and "wait for stage 1" not in planned
    assert f"  blowup: not measured, the lr selection of blowup.baseline failed ({why})" in planned
    # A second `rlrs select` decides the same, training nothing.
    assert rlrs_main(["select", str(path)]) == 0
    assert "[select blowup.baseline] already done: FAILED (no lr trained)" in capsys.readouterr().out

    # The database marks the cell failed; check 2 fails it; the report says the size is not measured.
    plan_json = tmp_path / "results" / "diverges" / "plan.json"
    write_plan(plan, plan_json)
    dbp = tmp_path / "results" / "diverges" / "rlrs.duckdb"
    runs_dir = tmp_path / "results" / "diverges" / "runs"
    db.ingest(dbp, sorted(runs_dir.iterdir()), plan=plan_json, select=db.select_results(plan_json))
    con = db.connect(dbp)
    try:
        rows = con.execute(
            "SELECT size, chosen_lr, bracketed, cap_reached, failed, n_points FROM lr_selection ORDER BY size"
        ).fetchall()
        check = analysis.compute(con, "diverges")["health"].filter(pl.col("check_name") == "lr_bracketed")
    finally:
        con.close()
    assert rows == [("blowup", None, False, True, True, 4), ("ok", 0.096, True, False, False, 4)]
    assert check.select("size", "status", "message").rows() == [
        ("blowup", "fail", f"the lr selection failed ({why}): no lr to measure at, the size is not measured"),
        ("ok", "pass", "lr 0.096 is interior to its sweep"),
    ]
    page = report.write_report("diverges", dbp, tmp_path / "report" / "index.html", figures=False).html
    missing = page.split('id="not-measured"')[1].split("</div>")[0]
    assert "<li>blowup (baseline): the lr selection failed (every lr diverged, down to 250000" in missing
    lr = page.split("<h3>lr choices</h3>")[1].split("</table>")[0]
    assert "<td>blowup</td><td>baseline</td><td>—</td><td>failed: no lr trained</td>" in lr
