"""`rlrs query` cannot touch the file system: external access is off on its
connection and the setting is locked, so every statement that would read
or write a file, attach a database or load an extension is refused in one
line with a non-zero exit, and nothing changes; ordinary SELECTs over every
table and view still work."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from rlrs import analysis, db

from _analysis_fixtures import StudyDB, add_ladder
from _cli_fixtures import cli_query


@pytest.fixture(scope="module")
def study_db(tmp_path_factory) -> Path:
    """A study database with every table and the analysis views, as collect leaves it."""
    s = StudyDB(study="q")
    add_ladder(s)
    s.run(arm="rlrs", loss=2.9)
    path = s.write(tmp_path_factory.mktemp("query") / "rlrs.duckdb")
    con = db.connect(path, read_only=False)
    try:
        con.execute("BEGIN")
        analysis.materialize(con)
        con.execute("COMMIT")
    finally:
        con.close()
    return path


def snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


REFUSED = [
    "COPY runs TO 'x.csv'",
    "COPY (SELECT 1) TO 'x.parquet' (FORMAT parquet)",
    "EXPORT DATABASE 'dump'",
    "ATTACH 'other.duckdb' AS other",
    "INSTALL httpfs",
    "LOAD httpfs",
    "SELECT * FROM read_csv('x.csv')",
    "SELECT * FROM 'file.parquet'",
    "SELECT * FROM read_text('/etc/hostname')",
    "SELECT * FROM glob('*')",
]


@pytest.mark.parametrize("sql", REFUSED)
def test_file_system_statements_are_refused(study_db, tmp_path, monkeypatch, capsys, sql):
    monkeypatch.chdir(tmp_path)  # relative paths would land here
    before, cwd_before = snapshot(study_db.parent), snapshot(tmp_path)
    assert cli_query(sql, db=study_db) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("rlrs query: error: refused: a query cannot read or write files")
    assert snapshot(study_db.parent) == before and snapshot(tmp_path) == cwd_before == {}


@pytest.mark.parametrize(
    "sql", ["SET enable_external_access = true", "SET lock_configuration = false", "RESET enable_external_access"]
)
def test_the_setting_cannot_be_turned_back_on(study_db, capsys, sql):
    assert cli_query(sql, db=study_db) == 2
    err = capsys.readouterr().err
    assert "the configuration has been locked" in err and len(err.strip().splitlines()) == 1


def test_writes_are_refused_as_before(study_db, capsys):
    before = snapshot(study_db.parent)
    assert cli_query("CREATE TABLE t AS SELECT 1", db=study_db) == 2
    assert "opened read-only; only `rlrs collect` writes it" in capsys.readouterr().err
    assert snapshot(study_db.parent) == before


def test_every_table_and_view_can_still_be_queried(study_db, capsys):
    con = db.connect(study_db)
    try:
        names = [
            r[0]
            for r in con.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main' ORDER BY 1"
            ).fetchall()
        ]
        counts = {n: con.execute(f'SELECT count(*) FROM "{n}"').fetchall()[0][0] for n in names}
    finally:
        con.close()
    assert {"runs", "metrics", "plan", "studies", "speedup", "final_losses", "component_metrics"} <= set(names)
    for name in names:
        capsys.readouterr()
        assert cli_query(f'SELECT count(*) AS n FROM "{name}"', db=study_db, fmt="csv") == 0, name
        assert capsys.readouterr().out == f"n\n{counts[name]}\n", name
    assert counts["speedup"] > 0 and counts["runs"] == 6


def test_the_command_line_exits_non_zero_and_writes_no_file(study_db, tmp_path):
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "rlrs", "query", "--db", str(study_db), "COPY runs TO 'x.csv'"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ},
    )
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and "external access is off" in done.stderr
    assert list(tmp_path.iterdir()) == []
