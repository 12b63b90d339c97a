"""Column documentation is stored once, in the database (COMMENT ON), and
the README's tables of tables and views agree with duckdb_columns() and the
analysis registry."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from rlrs import analysis, db
from rlrs.components import COMPONENTS, SCHEDULED

README = Path(__file__).resolve().parent.parent / "README.md"


@pytest.fixture(scope="module")
def con(tmp_path_factory):
    """A fresh study database with its analysis views, as collect leaves it."""
    path = tmp_path_factory.mktemp("docs") / "rlrs.duckdb"
    con = db.connect(path, read_only=False)
    con.execute("BEGIN")
    analysis.materialize(con)
    con.execute("COMMIT")
    yield con
    con.close()


def columns(con) -> dict[str, dict[str, str | None]]:
    out: dict[str, dict[str, str | None]] = {}
    for table, column, comment in con.execute(
        "SELECT table_name, column_name, comment FROM duckdb_columns() "
        "WHERE NOT internal AND schema_name = 'main' AND table_name NOT LIKE 'analysis%'"
    ).fetchall():
        out.setdefault(table, {})[column] = comment
    return out


def readme_rows(header: str) -> dict[str, str]:
    """First cell (a `name`) -> the rest of the row, for the Markdown table under `header`."""
    text = README.read_text()
    block = text[text.index(header) :].split("\n\n")[0]
    rows = {}
    for line in block.splitlines()[2:]:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        rows[cells[0].strip("`")] = cells[1:]
    return rows


def test_every_table_view_and_column_is_documented_in_the_database(con):
    cols = columns(con)
    assert {
        "runs",
        "metrics",
        "plan",
        "studies",
        "tune_trajectory",
        "tuned",
        "lr_selection",
        "schema_version",
        "final_losses",
        "component_metrics",
        "eval_curves",
        *analysis.VIEWS,
    } <= set(cols)
    undocumented = [f"{t}.{c}" for t, cs in cols.items() if t not in analysis.VIEWS for c, doc in cs.items() if not doc]
    assert undocumented == []
    comments = dict(
        con.execute(
            "SELECT table_name, comment FROM duckdb_tables() WHERE NOT internal "
            "AND table_name NOT LIKE 'analysis%' UNION ALL "
            "SELECT view_name, comment FROM duckdb_views() WHERE NOT internal"
        ).fetchall()
    )
    assert [name for name, doc in comments.items() if not doc] == []


def _expand(name: str) -> list[str]:
    """README shorthand for the per-component columns."""
    if name == "mult_<component>_start/end":
        return [f"mult_{c}_{e}" for c in SCHEDULED for e in ("start", "end")]
    if name in ("lr_<component>", "update_<component>"):
        return [name.replace("<component>", c) for c in COMPONENTS]
    return [name]


def test_readme_table_of_tables_matches_duckdb_columns(con):
    cols = columns(con)
    rows = readme_rows("| table | one row per | main columns |")
    tables = {
        t for t in cols if t not in analysis.VIEWS and t not in ("final_losses", "component_metrics", "eval_curves")
    }
    assert set(rows) == tables
    for table, (_, main) in rows.items():
        named = [n for raw in re.findall(r"`([^`]+)`", main) for n in _expand(raw)]
        assert named and [n for n in named if n not in cols[table]] == [], table


def test_readme_table_of_views_matches_the_registry_and_the_database(con):
    rows = readme_rows("| view | one row per |")
    comments = dict(con.execute("SELECT view_name, comment FROM duckdb_views() WHERE NOT internal").fetchall())
    assert set(rows) == set(comments)
    assert {name: cells[0] for name, cells in rows.items()} == comments
    assert {name: v.doc for name, v in analysis.VIEWS.items()} == {n: comments[n] for n in analysis.VIEWS}


def test_design_doc_holds_the_run_config_fields_table():
    """docs/design.md's table of run-config fields is the one rlrs.config derives."""
    from rlrs.config import fields_table

    design = (README.parent / "docs" / "design.md").read_text()
    block = design.split("<!-- fields-table -->\n")[1].split("<!-- /fields-table -->")[0]
    assert block == fields_table()


def test_readme_tables_of_health_checks_and_settings_match_the_code():
    from rlrs.analysis.health import CHECKS, SETTINGS

    checks = readme_rows("| check | spec | what it says |")
    assert checks == {c.name: [str(c.number), c.doc] for c in CHECKS}
    settings = readme_rows("| setting | default | meaning |")
    assert settings == {s.name: [f"{s.default:g}", s.doc] for s in SETTINGS}
