"""The committed study-cpu v1 record, rebuilt from its run directories by
`rlrs collect`: the health view fails checks 1, 2 and 3 where the
independent recomputation found them (docs/protocol.md), and the report's
headline shows none of those speedups. Real data, ~10 s."""

from __future__ import annotations

import re
from pathlib import Path

import duckdb
import pytest
import vl_convert as vlc
from test_committed_studies import collect

from rlrs import plots, report
from rlrs.analysis import health
from rlrs.vega import VL_VERSION

from _figure_fixtures import svg_points

REPO = Path(__file__).resolve().parent.parent
V1 = REPO / "results" / "study-cpu-v1"
TRANSFERRED = {"dense-m", "dense-l", "moe-m", "moe-l"}
ARMS = {"baseline", "rlrs"}


@pytest.fixture(scope="module")
def v1_db(tmp_path_factory) -> Path:
    db = tmp_path_factory.mktemp("v1") / "rlrs.duckdb"
    assert "408 run(s) written" in collect("study-cpu-v1", db)
    return db


def failed(con, check: str) -> set[tuple[str, str]]:
    rows = con.execute(
        "SELECT size, arm FROM health WHERE study = 'study-cpu-v1' AND check_name = ? AND status = 'fail'", [check]
    ).fetchall()
    return set(rows)


def test_v1_health_fails_checks_1_2_3_where_the_recomputation_found_them(v1_db):
    con = duckdb.connect(str(v1_db), read_only=True)
    # 1: the loss rises with size at dense-l, moe-m and moe-l, in both arms.
    assert failed(con, "loss_falls_with_size") == {(s, a) for s in ("dense-l", "moe-m", "moe-l") for a in ARMS}
    # 2: at all four transferred sizes both arms' best lr is the edge of the sweep.
    assert failed(con, "lr_bracketed") == {(s, a) for s in TRANSFERRED for a in ARMS}
    # 3: the ladder brackets the RLRS loss at one size of six (dense-s).
    assert failed(con, "ladder_brackets_arm") == {(s, "rlrs") for s in TRANSFERRED | {"moe-s"}}
    ok = con.execute(
        "SELECT status, round(value, 3) FROM health WHERE check_name = 'ladder_brackets_arm' AND size = 'dense-s'"
    ).fetchall()
    assert ok == [("pass", 0.051)]
    # 8: the lr was chosen on the reported seeds, the tuning ran on seed 0.
    assert failed(con, "seeds_disjoint") == {(None, None)}
    # 6: the MoE baseline is 0.43 nats behind the dense model of its active size.
    moe = con.execute("SELECT status, round(value, 3) FROM health WHERE check_name = 'moe_vs_dense' AND size = 'moe-s'")
    assert moe.fetchall() == [("fail", 0.433)]


def test_v1_speedups_are_all_blocked_and_the_report_shows_none_as_a_headline(v1_db, tmp_path):
    con = duckdb.connect(str(v1_db), read_only=True)
    rows = con.sql("SELECT * FROM health WHERE study = 'study-cpu-v1'").pl()
    for size in ("dense-s", "dense-m", "dense-l", "moe-s", "moe-m", "moe-l"):
        assert health.blocking_failures(rows, size, "rlrs", estimate="speedup"), size
        assert health.blocking_failures(rows, size, "rlrs", estimate="loss_gap"), size
    con.close()
    page = report.write_report("study-cpu-v1", v1_db, tmp_path / "index.html", figures=False).html
    headline = page.split('id="headline"')[1].split("</table>")[0]
    assert "blocked" in headline and "lr_bracketed" in headline
    # dense-s's ladder speedup (+5.1%) is under its failures, not in the headline.
    assert "+5.1%" not in headline
    blocked = page.split('id="blocked"')[1].split("</table>")[0]
    assert "+5.1%" in blocked


def test_v1_figures_draw_every_number_as_blocked(v1_db):
    """Every v1 number is under a failed check (seeds_disjoint at least): the
    figures draw each hollow, join none by a line, and bounds stay triangles."""
    con = duckdb.connect(str(v1_db), read_only=True)
    sp = con.sql("SELECT * FROM speedup WHERE study = 'study-cpu-v1'").pl()
    con.close()
    numbered = sp.filter(sp["speedup_kind"].is_not_null())
    assert numbered.height == 8 and numbered["speedup_blocked_by"].null_count() == 0
    assert sp.filter(sp["loss_gap"].is_not_null())["loss_gap_blocked_by"].null_count() == 0
    kinds = dict(zip(numbered["size"] + "/" + numbered["definition"], numbered["speedup_kind"]))
    assert kinds["moe-s/ladder"] == "at least" and kinds["dense-s/ladder"] == "estimate"
    for chart, n in ((plots.speedup_vs_size(sp), 8), (plots.loss_gap_vs_size(sp), 6)):
        svg = vlc.vegalite_to_svg(chart.to_dict(), vl_version=VL_VERSION)
        points = svg_points(svg)
        assert len(points) == n and {p["fill"] for p in points} == {"white"}
        assert all("L" not in d for d in re.findall(r'aria-roledescription="line mark" d="([^"]*)"', svg))
        assert "every number here is under a failed health check" in svg
    svg = vlc.vegalite_to_svg(plots.speedup_vs_size(sp).to_dict(), vl_version=VL_VERSION)
    shapes = {p["size"] + "/" + p["definition"]: p["point"] for p in svg_points(svg)}
    assert shapes["moe-s/ladder"] == "at least (beyond longest baseline)" and shapes["dense-s/ladder"] == "estimate"
