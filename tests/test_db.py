"""The results database: real DuckDB files built from run directories in the
format of docs/design.md (constructed values, plus one real training run)."""

import hashlib
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rlrs import db
from rlrs.components import COMPONENTS, SCHEDULED
from rlrs.schedule import lr_at
from tests._cli_fixtures import cli_collect, cli_query
from tests._db_fixtures import (
    clone_run_dir,
    corrupt_data_page,
    loss_at,
    make_run_dir,
    write_plan,
)

ROOT = Path(__file__).resolve().parents[1]
A, B, C, D = "aaaaaaaaaaaa", "bbbbbbbbbbbb", "cccccccccccc", "dddddddddddd"


def rows(db_path, sql):
    """Every row of a query, read-only, as a list of tuples."""
    con = duckdb.connect(str(db_path), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def snapshot(db_path, run_id=None):
    """Full contents of the written tables (optionally one run's rows)."""
    where = f"WHERE run_id = '{run_id}'" if run_id else ""
    return {
        "runs": rows(db_path, f"SELECT * FROM runs {where} ORDER BY run_id"),
        "metrics": rows(db_path, f"SELECT * FROM metrics {where} ORDER BY run_id, step"),
        "plan": rows(db_path, f"SELECT * FROM plan {where} ORDER BY ALL"),
        "studies": [] if run_id else rows(db_path, "SELECT * FROM studies ORDER BY name"),
    }


def sha(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture
def four_runs(tmp_path):
    """A dense baseline, an MoE rlrs run, a diverged run, a failed run without metrics."""
    runs = tmp_path / "runs"
    return [
        make_run_dir(runs / A, A, 100),
        make_run_dir(runs / B, B, 100, moe=True, offset=-0.25),
        make_run_dir(runs / C, C, 100, status="diverged", steps_done=30, lr=0.05),
        make_run_dir(runs / D, D, 100, status="failed", write_metrics=False),
    ]


@pytest.fixture
def db_path(tmp_path, four_runs):
    path = tmp_path / "results" / "demo" / "rlrs.duckdb"
    result = db.ingest(path, four_runs, study="demo")
    assert result.ingested == (A, B, C, D) and result.skipped == ()
    return path


# ----------------------------------------------------------------- schema


def test_tables_views_and_contract_columns(db_path):
    cols = {
        t: {r[0] for r in rows(db_path, f"SELECT column_name FROM information_schema.columns WHERE table_name = '{t}'")}
        for t in (
            "runs",
            "metrics",
            "plan",
            "studies",
            "schema_version",
            "final_losses",
            "component_metrics",
            "eval_curves",
        )
    }
    assert {"run_id", "arm", "size", "seed", "steps", "status", "final_eval_loss", "params_nonembedding"} <= cols[
        "runs"
    ]
    assert {"run_id", "step", "train_loss", "eval_loss"} <= cols["metrics"]
    assert {f"mult_{c}_{e}" for c in SCHEDULED for e in ("start", "end")} <= cols["runs"]
    assert {f"{k}_{c}" for c in COMPONENTS for k in ("lr", "update")} <= cols["metrics"]
    assert cols["component_metrics"] == {"run_id", "step", "component", "lr", "update_size"}
    assert cols["eval_curves"] == {"run_id", "step", "tokens", "eval_loss"}
    assert {
        "study",
        "run_id",
        "size",
        "arm",
        "sweep",
        "final_eval_loss",
        "train_loss_last100",
        "status",
        "lr",
        "seed",
        "steps",
        "params_nonembedding",
    } <= cols["final_losses"]
    assert rows(db_path, "SELECT version FROM schema_version") == [(db.SCHEMA_VERSION,)]
    pk = rows(
        db_path,
        "SELECT constraint_column_names FROM duckdb_constraints() "
        "WHERE table_name = 'metrics' AND constraint_type = 'PRIMARY KEY'",
    )
    assert pk == [(["run_id", "step"],)]


# ----------------------------------------------------------------- values


def test_runs_rows_hold_config_and_summary_values(db_path, four_runs):
    (dense,) = rows(
        db_path,
        f"SELECT study, size, arm, sweep, tags, moe, n_experts, d_model, lr, warmup_steps, "
        f"mult_embedding_start, mult_ffn_end, mult_experts_start, steps, steps_done, seed, "
        f"status, final_eval_loss, params_nonembedding, started_at, run_dir, error "
        f"FROM runs WHERE run_id = '{A}'",
    )
    assert dense[:17] == (
        "demo",
        "s1",
        "baseline",
        "main",
        "{}",
        False,
        None,
        64,
        3e-3,
        1,
        1.0,
        1.0,
        None,
        100,
        100,
        0,
        "completed",
    )
    assert dense[17] == loss_at(99) + 0.1
    assert dense[18] == 80_000
    assert dense[19].isoformat() == "2026-11-24T01:00:00"  # naive UTC
    assert dense[20] == str(four_runs[0].resolve()) and dense[21] is None
    (moe,) = rows(
        db_path,
        f"SELECT moe, n_experts, top_k, mult_embedding_start, mult_embedding_end, "
        f"mult_experts_start, mult_ffn_start, json_extract(multipliers, '$.router.start')::DOUBLE, "
        f"json_extract_string(config, '$.model.moe.n_experts') FROM runs WHERE run_id = '{B}'",
    )
    assert moe == (True, 8, 1, 5.0, 0.666, 0.3, None, 0.666, "8")


def test_metrics_and_views_hold_exact_values(db_path):
    assert rows(db_path, "SELECT run_id, count(*), min(step), max(step) FROM metrics GROUP BY 1 ORDER BY 1") == [
        (A, 100, 0, 99),
        (B, 100, 0, 99),
        (C, 30, 0, 29),
    ]
    assert rows(db_path, f"SELECT train_loss, tokens FROM metrics WHERE run_id = '{B}' AND step = 10") == [
        (loss_at(10, -0.25), 11 * 16 * 128)
    ]
    assert rows(db_path, "SELECT run_id, step, eval_loss FROM eval_curves ORDER BY 1, 2") == [
        (A, 49, loss_at(49) + 0.1),
        (A, 99, loss_at(99) + 0.1),
        (B, 49, loss_at(49, -0.25) + 0.1),
        (B, 99, loss_at(99, -0.25) + 0.1),
    ]
    # long format: the components each model has, nothing for the ones it lacks
    assert rows(
        db_path,
        "SELECT run_id, list(DISTINCT component ORDER BY component), count(*) "
        "FROM component_metrics GROUP BY 1 ORDER BY 1",
    ) == [
        (A, ["attention", "embedding", "ffn", "head", "norm"], 500),
        (B, ["attention", "embedding", "experts", "head", "norm", "router"], 600),
        (C, ["attention", "embedding", "ffn", "head", "norm"], 150),
    ]
    (got,) = rows(
        db_path,
        f"SELECT lr, update_size FROM component_metrics WHERE run_id = '{B}' AND step = 60 AND component = 'experts'",
    )
    # the experts' (start, end) = (0.3, 1.125); the fixture's update size is 1e-3 * start / (t + 1)
    assert got == (lr_at("cosine", 3e-3, 0.0444, 1, 100, 0.3, 1.125, 60), 1e-3 * 0.3 / 61)


def test_diverged_and_failed_runs_are_ingested(db_path):
    assert rows(
        db_path,
        "SELECT run_id, status, final_eval_loss, steps_done, error FROM runs WHERE status <> 'completed' ORDER BY 1",
    ) == [(C, "diverged", None, 30, "diverged at step 30"), (D, "failed", None, 50, "failed at step 50")]
    assert rows(db_path, f"SELECT count(*) FROM metrics WHERE run_id = '{D}'") == [(0,)]


# ----------------------------------------------------------------- re-ingest


def test_reingest_leaves_identical_rows(db_path, four_runs):
    before = snapshot(db_path)
    again = db.ingest(db_path, four_runs, study="demo")
    assert again.ingested == () and again.unchanged == (A, B, C, D)
    assert snapshot(db_path) == before
    # Force the delete-then-insert path: rows come back identical except the write time.
    con = db.connect(db_path, read_only=False)
    con.execute("UPDATE runs SET source_sha256 = 'stale'")
    con.close()
    rewritten = db.ingest(db_path, four_runs, study="demo")
    assert rewritten.ingested == (A, B, C, D)
    after = snapshot(db_path)
    drop_time = lambda rs: [r[:-1] for r in rs]  # noqa: E731  (ingested_at is the last column)
    assert drop_time(after["runs"]) == drop_time(before["runs"])
    assert after["metrics"] == before["metrics"]
    assert all(a[-1] > b[-1] for a, b in zip(after["runs"], before["runs"]))


def test_changed_run_is_rewritten_others_untouched(db_path, four_runs):
    before = snapshot(db_path)
    # C resumed and completed: more steps, a final loss; its old rows go entirely
    make_run_dir(four_runs[2], C, 100, lr=0.05, offset=0.5)
    result = db.ingest(db_path, four_runs, study="demo")
    assert result.ingested == (C,) and result.unchanged == (A, B, D)
    assert rows(db_path, f"SELECT status, final_eval_loss FROM runs WHERE run_id = '{C}'") == [
        ("completed", loss_at(99, 0.5) + 0.1)
    ]
    assert rows(db_path, f"SELECT count(*), sum(train_loss) FROM metrics WHERE run_id = '{C}'") == [
        (100, pytest.approx(sum(loss_at(t, 0.5) for t in range(100)), rel=1e-12))
    ]
    for rid in (A, B, D):
        assert snapshot(db_path, rid) == {
            k: [r for r in v if rid in r] for k, v in before.items() if k != "studies"
        } | {"studies": []}


# ----------------------------------------------------------------- bad run directories


def test_corrupt_dirs_are_skipped_by_name_and_their_rows_kept(db_path, four_runs, tmp_path, capsys):
    a, b, c, _ = four_runs
    kept = {rid: snapshot(db_path, rid) for rid in (A, B, C)}
    (a / "metrics.parquet").write_bytes(b"PAR1 this is not a parquet file")
    (b / "summary.json").write_text((b / "summary.json").read_text()[:40])  # truncated
    summary = json.loads((c / "summary.json").read_text())
    (c / "summary.json").write_text(json.dumps({**summary, "run_id": "ffffffffffff"}))
    e = make_run_dir(tmp_path / "runs/eeeeeeeeeeee", "eeeeeeeeeeee", 100)
    no_loss = make_run_dir(tmp_path / "runs/111111111111", "111111111111", 100)
    pq.write_table(pq.read_table(no_loss / "metrics.parquet").drop_columns(["train_loss"]), no_loss / "metrics.parquet")
    bad_page = make_run_dir(tmp_path / "runs/222222222222", "222222222222", 100)
    corrupt_data_page(bad_page / "metrics.parquet", "train_loss")
    dup = make_run_dir(tmp_path / "runs/333333333333", "333333333333", 100)
    t = pq.read_table(dup / "metrics.parquet")
    pq.write_table(pa.concat_tables([t, t.slice(5, 1)]), dup / "metrics.parquet")

    code = cli_collect(db_path, [*four_runs, e, no_loss, bad_page, dup], study="demo")
    err = capsys.readouterr().err
    assert code == 0
    expected = {
        a: "corrupt: metrics.parquet is unreadable",
        b: "corrupt: summary.json is not valid JSON",
        c: "corrupt: run_id mismatch: config.json says 'cccccccccccc', summary.json says 'ffffffffffff'",
        no_loss: "corrupt: metrics.parquet lacks column(s) train_loss",
        bad_page: "corrupt: metrics.parquet is unreadable",
        dup: "corrupt: metrics.parquet has 1 duplicate or null step value(s)",
    }
    for path, reason in expected.items():
        assert f"rlrs collect: skipped {path}: {reason}" in err
    assert len(err.strip().splitlines()) == len(expected)
    for rid, snap in kept.items():
        assert snapshot(db_path, rid) == snap
    assert rows(db_path, "SELECT run_id FROM runs ORDER BY 1") == [(A,), (B,), (C,), (D,), ("eeeeeeeeeeee",)]


def test_incomplete_dirs_are_skipped(tmp_path):
    running = make_run_dir(tmp_path / "r1", "aaaaaaaaaaaa", 50, write_summary=False)
    odd = make_run_dir(tmp_path / "r2", "bbbbbbbbbbbb", 50)
    summary = json.loads((odd / "summary.json").read_text())
    (odd / "summary.json").write_text(json.dumps({**summary, "status": "running"}))
    empty = tmp_path / "r3"
    empty.mkdir()
    result = db.ingest(tmp_path / "x.duckdb", [running, odd, empty])
    assert result.ingested == ()
    assert [(s.run_dir, s.reason) for s in result.skipped] == [
        (running, "incomplete: no summary.json"),
        (odd, "incomplete: status 'running' (ingested: completed, diverged, failed)"),
        (empty, "not a run directory: no config.json"),
    ]
    assert rows(tmp_path / "x.duckdb", "SELECT count(*) FROM runs") == [(0,)]


@pytest.mark.parametrize(
    "file, change, reason",
    [
        ("summary.json", {"params_total": "many"}, "corrupt: params_total should be an integer, got 'many'"),
        (
            "summary.json",
            {"started_at": "yesterday"},
            "corrupt: started_at should be an ISO 8601 date-time, got 'yesterday'",
        ),
        ("config.json", {"model": {"d_model": 64}}, "corrupt: config.json has no model.n_layers"),
        ("config.json", {"seed": True}, "corrupt: seed should be an integer, got True"),
    ],
)
def test_bad_values_skip_the_run_with_the_field_named(tmp_path, file, change, reason):
    good = make_run_dir(tmp_path / "good", A, 20)
    bad = make_run_dir(tmp_path / "bad", B, 20)
    doc = json.loads((bad / file).read_text())
    (bad / file).write_text(json.dumps({**doc, **change}))
    result = db.ingest(tmp_path / "x.duckdb", [good, bad])
    assert result.ingested == (A,)
    assert [(s.run_dir, s.reason) for s in result.skipped] == [(bad, reason)]


def test_the_same_run_in_two_directories_is_read_once(tmp_path):
    first = make_run_dir(tmp_path / "one", A, 20)
    second = clone_run_dir(first, tmp_path / "two", A)
    result = db.ingest(tmp_path / "x.duckdb", [first, second])
    assert result.ingested == (A,)
    assert [(s.run_dir, s.reason) for s in result.skipped] == [
        (second, f"duplicate: run {A} was already read from {first}")
    ]


# ----------------------------------------------------------------- the plan


def test_one_run_in_two_sweeps_gives_two_final_loss_rows(tmp_path, four_runs):
    plan = write_plan(
        tmp_path / "plan.json",
        "demo",
        [
            {"run_id": A, "size": "s1", "arm": "baseline", "sweep": "main", "tags": {}},
            {"run_id": A, "size": "s1", "arm": "baseline", "sweep": "lr", "tags": {"lr_factor": 1.0}},
            {"run_id": B, "size": "s1", "arm": "rlrs", "sweep": "main", "tags": {}},
            {"run_id": "999999999999", "size": "s2", "arm": "rlrs", "sweep": "main", "tags": {}},
        ],
    )
    path = tmp_path / "rlrs.duckdb"
    db.ingest(path, four_runs[:3], plan=plan)
    assert rows(
        path, "SELECT run_id, size, arm, sweep, tags, status, final_eval_loss FROM final_losses ORDER BY ALL"
    ) == [
        ("999999999999", "s2", "rlrs", "main", "{}", "missing", None),
        (A, "s1", "baseline", "lr", '{"lr_factor": 1.0}', "completed", loss_at(99) + 0.1),
        (A, "s1", "baseline", "main", "{}", "completed", loss_at(99) + 0.1),
        (B, "s1", "rlrs", "main", "{}", "completed", loss_at(99, -0.25) + 0.1),
        (C, "s1", "baseline", "main", "{}", "diverged", None),  # not planned: its own labels
    ]
    assert rows(path, "SELECT name, file, sha256, config->>'$.name' FROM studies") == [
        ("demo", "workflow/configs/demo.yaml", "ab" * 32, "demo")
    ]
    # A new plan replaces that study's rows and leaves other studies' alone.
    other = write_plan(tmp_path / "other.json", "other", [{"run_id": C, "size": "s9", "arm": "x", "sweep": "lr"}])
    db.ingest(path, [], plan=other)
    write_plan(plan, "demo", [{"run_id": B, "size": "s1", "arm": "rlrs", "sweep": "main", "tags": {}}])
    db.ingest(path, [], plan=plan)
    assert rows(path, "SELECT study, run_id, sweep FROM plan ORDER BY ALL") == [("demo", B, "main"), ("other", C, "lr")]
    assert rows(path, "SELECT name FROM studies ORDER BY 1") == [("demo",), ("other",)]


@pytest.mark.parametrize(
    "runs, message",
    [
        ([{"run_id": 5}], "field runs[0].run_id: 5 is not of type 'string'"),
        ([{"size": "s1"}], "field runs[0]: 'run_id' is a required property"),
        (
            [{"run_id": A, "sweep": "main"}, {"run_id": A, "sweep": "main"}],
            f"field runs[1]: the same entry as runs[0] ({A})",
        ),
    ],
)
def test_bad_plan_is_refused_before_any_work(tmp_path, four_runs, capsys, runs, message):
    plan = write_plan(tmp_path / "plan.json", "demo", runs)
    path = tmp_path / "out" / "rlrs.duckdb"
    assert cli_collect(path, four_runs, plan=plan) == 2
    assert capsys.readouterr().err == f"rlrs collect: error: {plan}: {message}\n"
    assert not path.parent.exists()


def test_collect_input_errors(tmp_path, four_runs, capsys):
    path = tmp_path / "x.duckdb"
    assert cli_collect(path, [tmp_path / "nope"]) == 2
    assert capsys.readouterr().err == f"rlrs collect: error: run directory not found: {tmp_path / 'nope'}\n"
    assert cli_collect(path, []) == 2
    assert "nothing to collect" in capsys.readouterr().err
    plan = write_plan(tmp_path / "plan.json", "demo", [])
    assert cli_collect(path, four_runs, study="other", plan=plan) == 2
    assert capsys.readouterr().err == "rlrs collect: error: --study 'other' does not match the plan's study 'demo'\n"
    assert not path.exists()


# ----------------------------------------------------------------- atomicity and versions


def test_failed_transaction_writes_nothing(db_path, four_runs, tmp_path):
    before, digest = snapshot(db_path), sha(db_path)
    make_run_dir(four_runs[0], A, 100, offset=1.0)  # a change that would be written
    seen = []

    def hook(con):
        seen.append(con.execute(f"SELECT final_eval_loss FROM runs WHERE run_id = '{A}'").fetchall())
        raise RuntimeError("analysis failed")

    with pytest.raises(RuntimeError, match="analysis failed"):
        db.ingest(db_path, four_runs, study="demo", after_ingest=hook)
    assert seen == [[(loss_at(99, 1.0) + 0.1,)]]  # the hook saw the new rows inside the transaction
    assert snapshot(db_path) == before and sha(db_path) == digest
    # A new database: built under a temporary name, so nothing is left behind.
    fresh = tmp_path / "new" / "rlrs.duckdb"
    with pytest.raises(RuntimeError):
        db.ingest(fresh, four_runs, after_ingest=hook)
    assert list(fresh.parent.iterdir()) == []


def test_other_schema_versions_are_refused(db_path, four_runs, capsys):
    con = duckdb.connect(str(db_path))
    con.execute("UPDATE schema_version SET version = 99")
    con.close()
    digest = sha(db_path)
    assert cli_collect(db_path, four_runs) == 2
    assert capsys.readouterr().err == (
        f"rlrs collect: error: {db_path} has schema version 99, newer than the {db.SCHEMA_VERSION} this rlrs "
        "writes: upgrade rlrs, or collect into a new --db\n"
    )
    with pytest.raises(db.DatabaseError, match="schema version 99"):
        db.connect(db_path, read_only=False)
    assert sha(db_path) == digest
    con = duckdb.connect(str(db_path))
    con.execute("UPDATE schema_version SET version = 0")
    con.close()
    with pytest.raises(
        db.DatabaseError, match=f"schema version 0, older than the {db.SCHEMA_VERSION} this rlrs writes: delete it"
    ):
        db.ingest(db_path, four_runs)


def test_connect_read_write_creates_the_schema(tmp_path):
    con = db.connect(tmp_path / "new.duckdb", read_only=False)
    assert con.execute("SELECT count(*) FROM runs").fetchall() == [(0,)]
    con.close()
    with pytest.raises(db.DatabaseError, match="no database at"):
        db.connect(tmp_path / "missing.duckdb")


# ----------------------------------------------------------------- query


@pytest.mark.parametrize(
    "sql",
    [
        "INSERT INTO runs (run_id, status) VALUES ('x', 'completed')",
        "CREATE TABLE evil (a INTEGER)",
        "DROP TABLE metrics",
        "SELECT 1; DELETE FROM runs",
    ],
)
def test_query_refuses_writes(db_path, capsys, sql):
    before, digest = snapshot(db_path), sha(db_path)
    assert cli_query(sql, db=db_path) == 2
    out = capsys.readouterr()
    assert out.out == ""
    assert out.err.startswith(
        f"rlrs query: error: refused: {db_path} is opened read-only; only `rlrs collect` writes it"
    )
    assert out.err.count("\n") == 1
    assert snapshot(db_path) == before and sha(db_path) == digest


def test_query_prints_table_csv_and_json(db_path, capsys):
    sql = "SELECT run_id, arm, steps_done, final_eval_loss FROM runs ORDER BY run_id LIMIT 2"
    assert cli_query(sql, db=db_path, fmt="csv") == 0
    assert capsys.readouterr().out == (
        "run_id,arm,steps_done,final_eval_loss\n"
        f"{A},baseline,100,{loss_at(99) + 0.1!r}\n{B},rlrs,100,{loss_at(99, -0.25) + 0.1!r}\n"
    )
    assert cli_query(sql, db=db_path, fmt="json") == 0
    assert json.loads(capsys.readouterr().out) == [
        {"run_id": A, "arm": "baseline", "steps_done": 100, "final_eval_loss": loss_at(99) + 0.1},
        {"run_id": B, "arm": "rlrs", "steps_done": 100, "final_eval_loss": loss_at(99, -0.25) + 0.1},
    ]
    assert cli_query("SELECT run_id, step FROM metrics ORDER BY 1, 2", db=db_path) == 0
    table = capsys.readouterr().out
    assert table.count(A) == 100 and table.count(C) == 30  # every row, not a preview


def test_query_errors_are_one_line(db_path, tmp_path, capsys):
    assert cli_query("SELECT 1", db=tmp_path / "none.duckdb") == 2
    assert capsys.readouterr().err == (
        f"rlrs query: error: no database at {tmp_path / 'none.duckdb'} (run `rlrs collect` first, or pass --db)\n"
    )
    assert cli_query("SELECT * FROM nope", db=db_path) == 2
    assert capsys.readouterr().err.startswith("rlrs query: error: query failed: Catalog Error: Table with name nope")
    frame = db.read_frame(db_path, "SELECT count(*) AS n FROM runs WHERE status = ?", ["completed"])
    assert frame.to_dicts() == [{"n": 2}]


# ----------------------------------------------------------------- end to end


def test_cli_collect_and_query_end_to_end(tmp_path, four_runs):
    (four_runs[3] / "summary.json").unlink()  # D still running
    plan = write_plan(
        tmp_path / "plan.json",
        "demo",
        [
            {"run_id": A, "size": "s1", "arm": "baseline", "sweep": "main", "tags": {}},
            {"run_id": A, "size": "s1", "arm": "baseline", "sweep": "ladder", "tags": {"length_factor": 1.0}},
            {"run_id": B, "size": "s1", "arm": "rlrs", "sweep": "main", "tags": {}},
        ],
    )
    path = tmp_path / "results/demo/rlrs.duckdb"

    def rlrs(*args):
        return subprocess.run(
            [sys.executable, "-m", "rlrs.cli", *map(str, args)], capture_output=True, text=True, cwd=ROOT, timeout=120
        )

    proc = rlrs("collect", "--db", path, "--study", "demo", "--plan", plan, "--runs-root", tmp_path / "runs")
    assert proc.returncode == 0, proc.stderr
    assert f"rlrs collect: skipped {four_runs[3]}: incomplete: no summary.json" in proc.stderr
    assert re.fullmatch(
        rf"collected into {re.escape(str(path))} in \d+\.\d\d s: 3 run\(s\) written, 0 unchanged, "
        r"1 skipped\n",
        proc.stdout,
    )
    proc = rlrs("query", "SELECT run_id, sweep, status FROM final_losses ORDER BY ALL", "--db", path, "--format", "csv")
    assert proc.returncode == 0, proc.stderr
    assert (
        proc.stdout
        == f"run_id,sweep,status\n{A},ladder,completed\n{A},main,completed\n{B},main,completed\n{C},main,diverged\n"
    )
    # collect also committed the analysis tables (rlrs.analysis.materialize ran inside the transaction)
    assert rows(path, "SELECT count(*) FROM information_schema.tables WHERE table_name = 'speedup'") == [(1,)]
    proc = rlrs("query", "DROP TABLE runs", "--db", path)
    assert proc.returncode == 2 and "read-only" in proc.stderr and proc.stdout == ""


def test_real_training_runs_ingest(tmp_path):
    """The trainer's run directories (a completed and a diverged run) ingest as-is."""
    from rlrs.train import train
    from tests._train_fixtures import tiny

    done = train(tiny(train__steps=12, train__eval_interval=6), tmp_path / "done", executor="debug")
    boom = train(tiny(optim__lr=1e4, optim__grad_clip=None, train__steps=60), tmp_path / "boom", executor="debug")
    assert boom["status"] == "diverged"
    path = tmp_path / "rlrs.duckdb"
    result = db.ingest(path, [tmp_path / "done", tmp_path / "boom"])
    assert result.ingested == (done["run_id"], boom["run_id"]) and result.skipped == ()
    assert rows(
        path,
        f"SELECT status, final_eval_loss, train_loss_last100, params_nonembedding, d_model, steps_done, "
        f"executor, mult_embedding_start FROM runs WHERE run_id = '{done['run_id']}'",
    ) == [
        (
            "completed",
            done["final_eval_loss"],
            done["train_loss_last100"],
            done["params_nonembedding"],
            32,
            12,
            "debug",
            1.0,
        )
    ]
    assert rows(path, f"SELECT count(*), max(step) FROM metrics WHERE run_id = '{done['run_id']}'") == [(12, 11)]
    assert rows(path, f"SELECT step FROM eval_curves WHERE run_id = '{done['run_id']}' ORDER BY 1") == [(5,), (11,)]
    assert rows(path, "SELECT list(DISTINCT component ORDER BY component) FROM component_metrics") == [
        (["attention", "embedding", "ffn", "head", "norm"],)
    ]
    assert rows(path, "SELECT count(*) FROM metrics WHERE lr_router IS NOT NULL OR lb_loss IS NOT NULL") == [(0,)]
    # the diverged run: its partial metrics, ending in a non-finite loss
    assert rows(
        path, f"SELECT status, final_eval_loss, steps_done, error FROM runs WHERE run_id = '{boom['run_id']}'"
    ) == [("diverged", None, boom["steps_done"], boom["error"])]
    assert rows(
        path, f"SELECT count(*), isfinite(arg_max(train_loss, step)) FROM metrics WHERE run_id = '{boom['run_id']}'"
    ) == [(boom["steps_done"], False)]


def test_ingest_100_runs_of_2000_steps_is_fast(tmp_path):
    src = make_run_dir(tmp_path / "src", "000000000000", 2000, moe=True)
    dirs = [clone_run_dir(src, tmp_path / f"runs/{i:012x}", f"{i:012x}") for i in range(1, 101)]
    path = tmp_path / "rlrs.duckdb"
    t0 = time.perf_counter()
    result = db.ingest(path, dirs)
    seconds = time.perf_counter() - t0
    print(f"ingest 100 runs x 2000 steps: {seconds:.2f} s")
    assert len(result.ingested) == 100
    assert rows(path, "SELECT count(*), count(DISTINCT run_id), sum(train_loss) FROM metrics") == [
        (200_000, 100, pytest.approx(100 * sum(loss_at(t) for t in range(2000)), rel=1e-12))
    ]
    assert seconds < 15, seconds  # measured ~1 s on 2 cores; 1,000 runs ~6 s
