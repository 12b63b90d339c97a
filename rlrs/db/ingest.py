"""The one writer: `ingest()` puts finished run directories, the study's
plan and its search results into the database in ONE transaction."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import duckdb

from rlrs.db.connect import DatabaseError, first_line, open_rw
from rlrs.db.rundirs import RunRow, Skipped, read_run_dirs
from rlrs.db.schema import (
    LR_SELECTION_COLUMNS,
    METRIC_COLUMNS,
    PLAN_COLUMNS,
    RUN_COLUMNS,
    TRAJECTORY_COLUMNS,
    TUNED_COLUMNS,
    create_schema,
    has_table,
    utc_now,
)
from rlrs.errors import ConfigError
from rlrs.study import selection
from rlrs.study.plan import load_plan
from rlrs.study.searches import finished_results


@dataclass(frozen=True)
class IngestResult:
    ingested: tuple[str, ...]  # run ids written (new or changed)
    unchanged: tuple[str, ...]  # run ids whose rows were already up to date
    skipped: tuple[Skipped, ...]
    seconds: float


def _stage_metrics(con: duckdb.DuckDBPyConnection, runs: list[RunRow]) -> dict[str, str]:
    """Load the metrics of `runs` into temp table _stage. Returns
    {run_id: reason} for runs whose metrics turned out unusable (their rows
    are not staged). One read_parquet over all files; only if that fails is
    each file read alone, to name the broken ones."""
    with_metrics = [r for r in runs if r.metrics is not None]
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE _stage (run_id VARCHAR, "
        f"{', '.join(f'{k} {v}' for k, v in METRIC_COLUMNS.items())})"
    )
    _temp_table_from(
        con, "_files", {"filename": [str(r.metrics) for r in with_metrics], "run_id": [r.run_id for r in with_metrics]}
    )
    bad: dict[str, str] = {}
    try:
        _insert_metrics(con, with_metrics)
    except duckdb.Error:
        # Rare: a file whose footer reads fine but whose data does not.
        con.execute("DELETE FROM _stage")
        for run in with_metrics:
            try:
                _insert_metrics(con, [run])
            except duckdb.Error as e:
                bad[run.run_id] = f"corrupt: metrics.parquet is unreadable ({first_line(e)})"
    for run_id, n in con.execute(
        "SELECT run_id, count(*) FROM "
        "(SELECT run_id, step FROM _stage GROUP BY ALL HAVING count(*) > 1 OR step IS NULL) GROUP BY run_id"
    ).fetchall():
        bad[run_id] = f"corrupt: metrics.parquet has {n} duplicate or null step value(s)"
    if bad:
        con.execute("DELETE FROM _stage WHERE list_contains(?, run_id)", [list(bad)])
    return bad


def _insert_metrics(con: duckdb.DuckDBPyConnection, runs: list[RunRow]) -> None:
    """One INSERT of every row of the runs' metrics files into _stage, tagged
    with the run id. union_by_name fills a column missing from some files with
    NULL; a column missing from every file is not in the union at all, so
    select NULL for it."""
    if not runs:
        return
    present = frozenset().union(*(r.metric_columns for r in runs))
    select = ", ".join(
        f"CAST(m.{k} AS {t})" if k in present else f"CAST(NULL AS {t})" for k, t in METRIC_COLUMNS.items()
    )
    con.execute(
        f"INSERT INTO _stage SELECT f.run_id, {select} "
        "FROM read_parquet(?, union_by_name = true, filename = true) AS m JOIN _files AS f USING (filename)",
        [[str(r.metrics) for r in runs]],
    )


def _temp_table_from(con: duckdb.DuckDBPyConnection, name: str, columns: dict[str, list], schema=None) -> None:
    """Create temp table `name` from Python columns through Arrow (one bulk copy,
    not a row-by-row insert)."""
    import pyarrow as pa

    table = pa.table(columns, schema=schema)
    con.register(f"{name}_arrow", table)
    try:
        con.execute(f"CREATE OR REPLACE TEMP TABLE {name} AS SELECT * FROM {name}_arrow")
    finally:
        con.unregister(f"{name}_arrow")


def _arrow_schema(columns: dict[str, str]):
    import pyarrow as pa

    types = {
        "BIGINT": pa.int64(),
        "DOUBLE": pa.float64(),
        "BOOLEAN": pa.bool_(),
        "VARCHAR": pa.string(),
        "JSON": pa.string(),  # serialized by _coerce; cast to JSON on insert
        "TIMESTAMP": pa.timestamp("us"),
    }
    return pa.schema([(name, types[sql.split()[0]]) for name, sql in columns.items()])


def _write_plan(con: duckdb.DuckDBPyConnection, plan: dict) -> None:
    """Replace this study's plan rows and its `studies` row."""
    study, runs = plan["study"], plan["runs"]
    con.execute("DELETE FROM plan WHERE study = ?", [study])
    _temp_table_from(
        con,
        "_plan_new",
        {
            "study": [study] * len(runs),
            "run_id": [r["run_id"] for r in runs],
            **{k: [r.get(k) for r in runs] for k in ("size", "arm", "sweep")},
            "tags": [json.dumps(r.get("tags") or {}, sort_keys=True) for r in runs],
        },
        schema=_arrow_schema(PLAN_COLUMNS),
    )
    con.execute("INSERT INTO plan BY NAME SELECT * FROM _plan_new")
    con.execute("DELETE FROM studies WHERE name = ?", [study])
    config = json.dumps(plan.get("study_config"), sort_keys=True)
    con.execute(
        "INSERT INTO studies VALUES (?, ?, ?, ?, ?)",
        [study, plan.get("study_file"), plan.get("study_sha256"), config, utc_now()],
    )


def _write_tune(con: duckdb.DuckDBPyConnection, study: str, results: list[Mapping]) -> None:
    """Replace this study's rows of `tune_trajectory` and `tuned` with the
    given search results (rlrs.tune result documents)."""
    traj, tuned = [], []
    for doc in results:
        if doc.get("study") != study:
            raise DatabaseError(
                f"tune result for {doc.get('size')}.{doc.get('arm')} belongs to study "
                f"{doc.get('study')!r}, not {study!r}"
            )
        head = {"study": study, **{k: doc[k] for k in ("size", "family", "arm", "space")}}
        for row in doc["trajectory"]:
            traj.append({**head, **{k: row[k] for k in TRAJECTORY_COLUMNS if k in row}})
        for name, value in doc["final"].items():
            start = doc["start"][name]
            tuned.append(
                {
                    **head,
                    "parameter": name,
                    "start_value": start,
                    "value": value,
                    "ratio": value / start if start else None,
                    **{k: doc[k] for k in ("best_score", "best_run_id", "runs_spent", "passes", "stop_reason")},
                }
            )
    for table, columns, rows in (("tune_trajectory", TRAJECTORY_COLUMNS, traj), ("tuned", TUNED_COLUMNS, tuned)):
        con.execute(f"DELETE FROM {table} WHERE study = ?", [study])
        _temp_table_from(
            con, f"_{table}_new", {k: [r.get(k) for r in rows] for k in columns}, schema=_arrow_schema(columns)
        )
        con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM _{table}_new")


def _write_select(con: duckdb.DuckDBPyConnection, study: str, results: list[Mapping]) -> None:
    """Replace this study's `lr_selection` rows with the given finished
    selection results (rlrs.select_lr result documents)."""
    rows = []
    for doc in results:
        if doc.get("study") != study:
            raise DatabaseError(
                f"lr selection for {doc.get('size')}.{doc.get('arm')} belongs to study {doc.get('study')!r}, not {study!r}"
            )
        row = {k: doc.get(k) for k in LR_SELECTION_COLUMNS}
        rows.append(
            row
            | {
                "study": study,
                "failed": selection.is_failed(doc),
                "n_points": len(doc["points"]),
                "selection_seeds": json.dumps(doc["selection_seeds"]),
                "ranked_on": json.dumps(doc["ranked_on"]),
            }
        )
    con.execute("DELETE FROM lr_selection WHERE study = ?", [study])
    _temp_table_from(
        con,
        "_lr_selection_new",
        {k: [r.get(k) for r in rows] for k in LR_SELECTION_COLUMNS},
        schema=_arrow_schema(LR_SELECTION_COLUMNS),
    )
    con.execute("INSERT INTO lr_selection BY NAME SELECT * FROM _lr_selection_new")


def ingest(
    db_path: Path | str,
    run_dirs: Iterable[Path | str],
    *,
    study: str | None = None,
    plan: Path | str | Mapping | None = None,
    after_ingest: Callable[[duckdb.DuckDBPyConnection], None] | None = None,
    progress: bool = False,
    tune: list[Mapping] | None = None,
    select: list[Mapping] | None = None,
) -> IngestResult:
    """Write the given run directories (and the plan) into the database in
    one transaction, and return what was written, left alone and skipped.

    - Unusable run directories are skipped with a reason; their existing rows
      are left exactly as they were.
    - A run whose files are byte-identical to those of its ingested rows
      (runs.source_sha256) is left alone; a changed run has its rows deleted,
      then inserted, so re-ingesting gives identical rows either way.
    - `tune`: the study's finished search results (rlrs.tune.finished_results);
      they replace its `tune_trajectory` and `tuned` rows (None: left alone).
    - `select`: a staged study's finished lr selections (select_results);
      they replace its `lr_selection` rows (None: left alone).
    - `after_ingest(con)` runs inside the transaction (rlrs.analysis adds
      derived tables there); if it raises, nothing is written.
    - A new database file is built under a temporary name and renamed into
      place, so a crash never leaves a half-written file; an existing one is
      protected by the transaction (DuckDB's write-ahead log).
    """
    t0 = time.perf_counter()
    db_path = Path(db_path)
    plan_doc = load_plan(plan) if plan is not None else None
    if plan_doc is not None and study is not None and plan_doc["study"] != study:
        raise DatabaseError(f"--study {study!r} does not match the plan's study {plan_doc['study']!r}")
    study = study if study is not None else (plan_doc or {}).get("study")

    db_path.parent.mkdir(parents=True, exist_ok=True)
    fresh = not db_path.exists()
    work = db_path.with_name(f".{db_path.name}.tmp-{os.getpid()}") if fresh else db_path
    try:
        con = open_rw(work)  # refuses a newer schema before reading any run
        try:
            runs, skipped = read_run_dirs(run_dirs, study, progress)
            known = _fingerprints(con)
            unchanged = [r.run_id for r in runs if known.get(r.run_id) == r.row["source_sha256"]]
            changed = [r for r in runs if known.get(r.run_id) != r.row["source_sha256"]]
            bad = _stage_metrics(con, changed)
            skipped += [Skipped(r.run_dir, bad[r.run_id]) for r in changed if r.run_id in bad]
            changed = [r for r in changed if r.run_id not in bad]
            now = utc_now()
            _temp_table_from(
                con,
                "_runs_new",
                {k: [now if k == "ingested_at" else r.row[k] for r in changed] for k in RUN_COLUMNS},
                schema=_arrow_schema(RUN_COLUMNS),
            )
            con.execute("BEGIN")
            try:
                create_schema(con)
                con.execute("DELETE FROM metrics WHERE run_id IN (SELECT run_id FROM _runs_new)")
                con.execute("DELETE FROM runs WHERE run_id IN (SELECT run_id FROM _runs_new)")
                con.execute("INSERT INTO runs BY NAME SELECT * FROM _runs_new")
                con.execute("INSERT INTO metrics BY NAME SELECT * FROM _stage")
                if plan_doc is not None:
                    _write_plan(con, plan_doc)
                if tune is not None:
                    if study is None:
                        raise DatabaseError("tune results need a study name (--study or --plan)")
                    _write_tune(con, study, tune)
                if select is not None:
                    if study is None:
                        raise DatabaseError("lr selections need a study name (--study or --plan)")
                    _write_select(con, study, select)
                if after_ingest is not None:
                    after_ingest(con)
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        finally:
            con.close()
        if fresh:
            os.replace(work, db_path)
    finally:
        if fresh:  # after a failure: the temporary file and its log
            for leftover in (work, work.with_name(work.name + ".wal")):
                leftover.unlink(missing_ok=True)
    return IngestResult(
        ingested=tuple(r.run_id for r in changed),
        unchanged=tuple(unchanged),
        skipped=tuple(skipped),
        seconds=time.perf_counter() - t0,
    )


def _fingerprints(con: duckdb.DuckDBPyConnection) -> dict[str, str]:
    """run_id -> source_sha256 of the runs already in the database."""
    return dict(con.execute("SELECT run_id, source_sha256 FROM runs").fetchall()) if has_table(con, "runs") else {}


def tune_results(plan: Path) -> list[dict] | None:
    """The finished, current search results of the plan's study, read from
    the tune/ folder beside plan.json (results/<study>/tune/); None when the
    study has no tune block."""
    config = load_plan(plan).get("study_config") or {}
    if not config.get("tune"):
        return None
    try:
        return finished_results(config, root=Path(plan).parent)
    except ConfigError as e:
        raise DatabaseError(f"{plan}: study_config: {e}") from None


def select_results(plan: Path) -> list[dict] | None:
    """The finished, current lr selections of the plan's study, read from the
    select/ folder beside plan.json; None when the study is not staged."""
    config = load_plan(plan).get("study_config") or {}
    if "selection_seeds" not in config:
        return None
    try:
        return selection.finished_results(config, root=Path(plan).parent)
    except ConfigError as e:
        raise DatabaseError(f"{plan}: study_config: {e}") from None
