"""rlrs report: a real page from a constructed study DuckDB, checked as files,
as HTML text (escaping, self-containment, headline numbers) and in headless
Chromium with the network closed."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import duckdb
import pytest

from rlrs import analysis, report, report_health
from rlrs.analysis import members, tables
from rlrs.cli import main as rlrs_main
from rlrs.db import connect as db_connect

from _analysis_fixtures import L, StudyDB, T, add_ladder, add_usweep, large_study
from _figure_fixtures import svg_points

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "test-artifacts"
ALL_FIGURES = [
    "speedup_vs_size",
    "loss_gap_vs_size",
    "loss_curves",
    "lr_schedules",
    "lr_sweep",
    "lr_vs_width",
    "usweep",
    "ablation",
    "update_sizes",
]


def full_study(study: str = "demo", arm: str = "rlrs") -> StudyDB:
    """Two sizes with every sweep, three seeds, one diverged and one failed
    run, and one planned run that never produced a result."""
    db = StudyDB(
        study=study, config={"study": study, "description": f"A constructed <study> of {arm}", "seeds": [0, 1, 2]}
    )
    for size, gain in (("s1", 1.2), ("s2", 1.3)):
        add_ladder(db, size=size, seeds=(0, 1, 2), noise=(-0.004, 0.0, 0.004))
        for seed, eps in zip((0, 1, 2), (0.003, -0.003, 0.0)):
            db.run(
                size=size, arm=arm, seed=seed, loss=L(gain * T) + eps, also=(("lr", {"lr": 1e-3, "lr_factor": 1.0}),)
            )
        for f, d in ((0.5, 0.03), (2.0, 0.02)):
            db.run(
                size=size, arm=arm, sweep="lr", lr=1e-3 * f, loss=L(gain * T) + d, tags={"lr": 1e-3 * f, "lr_factor": f}
            )
    db.run(
        size="s1",
        arm=arm,
        sweep="lr",
        lr=4e-3,
        status="diverged",
        error="loss became NaN at step 40",
        tags={"lr": 4e-3, "lr_factor": 4.0},
    )
    db.run(
        size="s2",
        arm="baseline",
        sweep="ladder",
        seed=7,
        steps=500,
        status="failed",
        error="worker lost <OOM>",
        tags={"length_factor": 0.5, "steps": 500},
    )
    add_usweep(db, "s1", {0.5: 2.7, 2.0: 2.65})
    add_usweep(db, "s2", {0.5: 2.6, 2.0: 2.62})
    db.run(arm=arm, sweep="removal", loss=2.7, tags={"component": "embedding"})
    db.run(arm="baseline", sweep="contribution", loss=2.6, tags={"component": "embedding", "source_arm": arm})
    db.plan.append((study, "feedfacecafe", "s2", arm, "usweep", '{"component": "head", "which": "end", "factor": 4.0}'))
    return db


def with_lr_selection(db_path: Path, unbracketed: tuple[str, str]) -> None:
    """The stage-1 result table (the stages side's contract) with every cell
    bracketed on selection seeds 10-11 but `unbracketed` (size, arm)."""
    con = duckdb.connect(str(db_path))  # the table is the database schema's (rlrs.db.schema)
    for size in ("s1", "s2"):
        for arm in ("baseline", "rlrs"):
            ok = (size, arm) != unbracketed
            con.execute(
                "INSERT INTO lr_selection (study, size, family, arm, centre_lr, chosen_lr, bracketed, cap_reached, "
                "failed, n_extra, n_points, factor, selection_seeds, ranked_on, note) "
                "VALUES ('demo', ?, 'dense', ?, 1e-3, 1e-3, ?, ?, false, ?, ?, 2.0, '[10, 11]', '[10, 11]', NULL)",
                [size, arm, ok, not ok, 0 if ok else 2, 3 if ok else 5],
            )
    con.close()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The full study's report, written through the real `rlrs report` command."""
    root = tmp_path_factory.mktemp("report")
    db_path = full_study().write(root / "results" / "demo" / "rlrs.duckdb")
    with_lr_selection(db_path, unbracketed=("s1", "rlrs"))
    out = root / "reports" / "demo"
    t0 = time.perf_counter()
    code = rlrs_main(["report", "workflow/configs/demo.yaml", "--db", str(db_path), "--out", str(out)])
    seconds = time.perf_counter() - t0
    assert code == 0
    html_path = out / "index.html"
    return {"html": html_path.read_text(), "path": html_path, "out": out, "db": db_path, "seconds": seconds}


def test_report_writes_one_page_and_every_figure(built):
    out, html = built["out"], built["html"]
    for name in ALL_FIGURES:
        assert (out / "figures" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert "<svg" in (out / "figures" / f"{name}.svg").read_text()[:500]
        assert f'data-spec="spec-{name}"' in html
    assert html.count("window.vegaEmbed=") == 1  # the JavaScript bundle, embedded once
    assert html.count('type="application/json"') == len(ALL_FIGURES)  # one spec per chart
    # Self-contained: no element of the page loads anything (script bodies
    # set aside: the bundle's own strings mention tags).
    markup = re.sub(r"<script[^>]*>.*?</script>", "", html, flags=re.S)
    assert not re.search(r"<(script|link|img|iframe|object|embed)\b", markup)
    assert not re.search(r"(src|href)=[\"']?https?://", markup)
    assert "Not shown" not in html
    assert oct(built["path"].stat().st_mode & 0o777) != oct(0o600)  # readable by others, per umask
    assert built["seconds"] < 60


def test_headline_table_shows_a_number_only_where_no_qualifying_check_fails(built):
    con = db_connect(built["db"])  # the report's own numbers: computed in memory, read-only
    try:
        frames = analysis.compute(con, "demo")
    finally:
        con.close()
    sp, hl = frames["speedup"], frames["health"]
    s2 = sp.filter((sp["size"] == "s2") & (sp["definition"] == "ladder")).row(0, named=True)
    s1 = sp.filter((sp["size"] == "s1") & (sp["definition"] == "ladder")).row(0, named=True)
    assert s2["speedup"] == pytest.approx(0.30, abs=0.005) and s1["speedup"] == pytest.approx(0.20, abs=0.005)
    # s1's rlrs lr is unbracketed (lr_selection): check 2 fails there and nowhere else.
    fails = hl.filter(hl["status"] == "fail").select("check_name", "size", "arm").rows()
    assert fails == [("lr_bracketed", "s1", "rlrs")]
    html = built["html"]
    headline = html.split('id="headline"')[1].split("</table>")[0]
    s2_text = (
        f"{s2['speedup'] * 100:+.1f}% [{s2['ci_low'] * 100:+.1f}%, {s2['ci_high'] * 100:+.1f}%] "
        "(ladder, paired-bootstrap, n=3)"
    )
    s1_text = f"{s1['speedup'] * 100:+.1f}%"
    assert s2_text in headline and f"{s2['loss_gap']:+.3f} nats" in headline
    assert s1_text not in headline and "blocked by lr_bracketed" in headline
    blocked = html.split('id="blocked"')[1].split("</table>")[0]
    assert s1_text in blocked and "lr 0.001 is at the edge of its sweep after the bracketing cap" in blocked
    # The notes under the headline are footnotes, numbered from the table.
    assert 'id="footnotes"' in html and "s1 [1]" in headline


def test_figures_draw_a_blocked_number_hollow_and_only_valid_ones_joined(built):
    """s1's numbers are blocked (its rlrs lr is unbracketed), s2's are not:
    the figures read that from the speedup view, and draw s1 hollow."""
    con = db_connect(built["db"])
    try:
        sp = analysis.compute(con, "demo")["speedup"]
    finally:
        con.close()
    assert sp.select("size", "definition", "speedup_kind", "speedup_blocked_by", "loss_gap_blocked_by").sort(
        "size", "definition"
    ).rows() == [
        ("s1", "ladder", "estimate", "lr_bracketed", "lr_bracketed"),
        ("s1", "target", "estimate", "lr_bracketed", "lr_bracketed"),
        ("s2", "ladder", "estimate", None, None),
        ("s2", "target", "estimate", None, None),
    ]
    for name, n in (("speedup_vs_size", 4), ("loss_gap_vs_size", 2)):
        svg = (built["out"] / "figures" / f"{name}.svg").read_text()
        points = svg_points(svg)
        assert len(points) == n, name
        for p in points:
            blocked = p["size"] == "s1"
            assert p["fill"] == ("white" if blocked else "#4c78a8"), (name, p)
            assert p["number"] == ("blocked: failed checks" if blocked else "rlrs"), (name, p)
            assert p["blocked by failed checks"] == ("lr_bracketed" if blocked else "null"), (name, p)
        assert "blocked: failed checks" in svg and "under a failed health check" in svg  # legend, subtitle
        # The line of a family joins its valid estimates only: here s2's alone (one vertex, per panel).
        lines = re.findall(r'aria-roledescription="line mark" d="([^"]*)"', svg)
        assert len(lines) == n // 2 and all("L" not in d for d in lines), (name, lines)
        # Intervals: s1's (100k parameters) dashed, s2's (400k) solid.
        bars = re.findall(
            r'<line aria-label="non-embedding parameters: (\w+);[^"]*"[^>]*aria-roledescription="rule mark"'
            r'[^>]*stroke-dasharray="([^"]*)"',
            svg,
        )
        assert sorted(bars) == [("100k", "3,2")] * (n // 2) + [("400k", "1,0")] * (n // 2), (name, bars)
    # The loss curves' subtitle names the checks that block s1's speedups.
    assert "[blocked: failed lr_bracketed]" in (built["out"] / "figures" / "loss_curves.svg").read_text()


def test_ablation_and_usweep_tables_show_each_number_beside_its_cells_checks(built):
    """s1's rlrs lr is unbracketed: the removal (of rlrs) and the U-sweep points at s1 say so beside their
    numbers; the contribution (into the baseline, whose lr is fine) and the s2 points do not."""
    html = built["html"]

    def cells(cls: str) -> list[list[str]]:
        body = html.split(f'class="{cls}"')[1].split("</table>")[0].split("<tbody>")[1]
        return [re.findall(r"<td>(.*?)</td>", r) for r in body.split("</tr>") if "<td>" in r]

    warned = "warn: tokens_per_param, plateau_exit"
    ablation = {(r[1], r[0]): r for r in cells("ablation")}
    assert ablation[("removal", "s1")][6] == "0.1010"
    assert ablation[("removal", "s1")][10] == f"fail: lr_bracketed; {warned}"
    assert ablation[("contribution", "s1")][10] == warned
    usweep = cells("usweep")
    assert {(r[0], r[-1]) for r in usweep} == {("s1", f"fail: lr_bracketed; {warned}"), ("s2", warned)}
    # The U-plot is drawn on the shared-seed means: the factor-1 point pools 3 seeds, the others 1.
    s1_one = next(r for r in usweep if r[0] == "s1" and r[4] == "1")
    assert (s1_one[5], s1_one[6], s1_one[7], s1_one[8]) == ("2.5990", "1", "2.5960", "3")
    spec = json.loads(html.split('<script type="application/json" id="spec-usweep">')[1].split("</script>")[0])
    drawn = {(r["size"], r["factor"]): r for rows in spec["datasets"].values() for r in rows}
    one = drawn[("s1", 1.0)]
    assert {layer["encoding"]["y"]["field"] for layer in spec["spec"]["layer"]} == {"mean_loss_shared"}
    assert one["mean_loss_shared"] == pytest.approx(2.599, abs=5e-5) and one["n"] == 3
    assert one["mean_loss_shared"] - one["mean_loss"] == pytest.approx(0.003, abs=1e-4)


def test_the_report_opens_with_the_description_and_the_health_checks(built):
    html = built["html"]
    body = html.split("</h1>")[1]
    assert body.index('id="description"') < body.index('id="health"') < body.index("<h2>Headline</h2>")
    assert '<p class="description" id="description">A constructed &lt;study&gt; of rlrs</p>' in body
    fails = re.findall(r"<td>(pass|warn|fail)</td>", body.split('class="health"')[1].split("</table>")[0])
    rest = re.findall(r"<td>(pass|warn|fail)</td>", body.split('class="health-rest"')[1].split("</table>")[0])
    assert fails == ["fail"] and rest and rest == sorted(rest, key=["warn", "pass"].index)
    lr = html.split("<h3>lr choices</h3>")[1].split("</table>")[0]
    assert lr.count("<td>unbracketed</td>") == 1 and lr.count("<td>bracketed</td>") == 3


def test_failed_diverged_and_missing_runs_are_listed(built):
    html = built["html"]
    section = html[html.index("Failed, diverged and missing runs") : html.index("<h2>Provenance")]
    assert "3 run(s) did not complete" in section
    assert "loss became NaN at step 40" in section and "diverged" in section
    assert "worker lost &lt;OOM&gt;" in section and "failed" in section
    assert "feedfacecafe" in section and "missing" in section


def test_tables_and_provenance(built):
    html = built["html"]
    assert "<h3>Model sizes</h3>" in html and "400k" in html
    assert "5.0 / 0.667" in html  # the rlrs embedding multipliers
    assert "abc1234" in html and "austen" in html and "0" * 64 in html
    assert "embedding.start (rlrs)" in html  # transfer regret row


def test_small_study_leaves_out_what_it_cannot_show_and_says_why(tmp_path):
    db = StudyDB(study="tiny")
    db.run(arm="baseline", status="failed", error="killed")
    db.run(arm="rlrs", loss=2.4)
    path = db.write(tmp_path / "tiny.duckdb")
    assert rlrs_main(["report", "tiny", "--db", str(path), "--out", str(tmp_path / "out")]) == 0
    html = (tmp_path / "out" / "index.html").read_text()
    assert "Not shown: no speedup could be computed" in html
    assert "Not shown: the study has no `lr` sweep" in html
    assert not (tmp_path / "out" / "figures" / "speedup_vs_size.png").exists()
    assert (tmp_path / "out" / "figures" / "loss_curves.png").exists()
    # No number: the headline cell says so and its footnote says why.
    assert "<td>—</td>" in html.split('id="headline"')[1].split("</table>")[0]
    footnotes = html.split('id="footnotes"')[1].split("</ol>")[0]
    assert "ladder needs baseline runs at &gt;= 2 lengths at the baseline&#x27;s best lr; have 0" in footnotes
    assert "1 run(s) did not complete" in html


def test_bad_input_is_refused_before_any_work(tmp_path, capsys):
    assert rlrs_main(["report", "demo", "--db", str(tmp_path / "nope.duckdb"), "--out", str(tmp_path / "o")]) == 2
    assert "no database at" in capsys.readouterr().err
    path = StudyDB(study="demo").write(tmp_path / "x.duckdb")
    assert rlrs_main(["report", "other", "--db", str(path), "--out", str(tmp_path / "o")]) == 2
    assert "study: 'other' is not in this database; allowed: demo" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_the_report_only_reads_the_database(tmp_path):
    """One writer (rlrs collect): a database whose analysis views were never
    materialized is reported from in-memory frames and left byte-identical."""
    path = full_study().write(tmp_path / "r.duckdb")
    before, mtime = path.read_bytes(), path.stat().st_mtime_ns
    assert rlrs_main(["report", "demo", "--db", str(path), "--out", str(tmp_path / "out")]) == 0
    assert path.read_bytes() == before and path.stat().st_mtime_ns == mtime
    assert not (tmp_path / "r.duckdb.wal").exists()
    con = db_connect(path)
    try:
        views = {r[0] for r in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()}
    finally:
        con.close()
    assert "speedup" not in views  # nothing was written behind the user's back


XSS = "<script>alert(1)</script>"
XSS_ARM = "</script><img src=x onerror=alert(2)>"


def test_strings_from_study_files_are_escaped(tmp_path):
    db = full_study(study=XSS, arm=XSS_ARM)
    path = db.write(tmp_path / "x.duckdb")
    con = db_connect(path)
    try:
        frames = analysis.compute(con, XSS)
        runs = members.load_members(con, XSS)
        extra = {
            "db_path": str(path),
            "sizes": tables.sizes_table(con, XSS),
            "multipliers": tables.arm_multipliers(con, runs),
            "problems": tables.problem_runs(con, runs),
            "provenance": tables.provenance(con, XSS),
        }
    finally:
        con.close()
    html = report.build_page(XSS, frames, extra, "/* bundle */").html
    assert XSS not in html and XSS_ARM not in html and "<img" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    # Exactly our own script elements: bundle, 7 specs, the render script.
    assert html.count("<script") == 1 + len(ALL_FIGURES) + 1
    assert html.count("</script>") == html.count("<script")
    # Inside the JSON specs the names survive as data, with '<' escaped.
    assert "\\u003c/script\\u003e\\u003cimg" in html


# ---------------------------------------------------------------- the browser
def chromium() -> str:
    """Path to Chromium, installing Debian's package when missing."""
    for name in ("chromium", "chromium-browser"):
        if shutil.which(name):
            return shutil.which(name)
    if os.geteuid() == 0 and shutil.which("apt-get"):
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, env=env, timeout=300)
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], capture_output=True, env=env, timeout=600)
        if shutil.which("chromium"):
            return shutil.which("chromium")
    pytest.skip("headless Chromium is not installed and `apt-get install chromium` was not possible here")


def headless(page: Path, profile: Path, *extra: str) -> subprocess.CompletedProcess:
    """Chromium with the network closed: every host unresolvable, every
    request sent to a dead proxy."""
    args = [
        chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        f"--user-data-dir={profile}",
        "--proxy-server=127.0.0.1:9",
        "--host-resolver-rules=MAP * ~NOTFOUND",
        "--enable-logging=stderr",
        "--v=0",
        "--virtual-time-budget=30000",
        "--hide-scrollbars",
        *extra,
        page.resolve().as_uri(),
    ]
    return subprocess.run(args, capture_output=True, text=True, timeout=180)


def rendered_status(dom: str) -> dict:
    m = re.search(r'<p id="render-status"([^>]*)>([^<]*)', dom)
    assert m, "no render status in the DOM"
    attrs = dict(re.findall(r'data-([a-z]+)="([^"]*)"', m.group(1)))
    return attrs | {"text": m.group(2)}


@pytest.mark.browser
@pytest.mark.slow
def test_every_chart_renders_offline_in_headless_chromium(built, tmp_path):
    run = headless(built["path"], tmp_path / "profile", "--dump-dom")
    dom = run.stdout
    status = rendered_status(dom)
    assert status["done"] == "yes", run.stderr[-2000:]
    assert (status["charts"], status["rendered"], status["errors"]) == (str(len(ALL_FIGURES)),) * 2 + ("0",), status[
        "text"
    ]
    # Each chart container holds a non-empty SVG.
    for name in ALL_FIGURES:
        m = re.search(
            rf'<div class="chart[^"]*" id="fig-{name}"[^>]*data-rendered="yes"[^>]*>(.*?)</div>', dom, re.S
        ) or re.search(rf'<div[^>]*id="fig-{name}"[^>]*>(.*?<svg.*?</svg>)', dom, re.S)
        assert m and "<svg" in m.group(1) and "<path" in m.group(1), name
    assert not re.search(r"CONSOLE.*(Uncaught|Error)", run.stderr), run.stderr[-2000:]
    # The protocol's sections are in the rendered page: the description, the
    # health table (its failure first), the headline table, the blocked numbers.
    for marker in ('id="description"', 'class="health"', 'id="headline"', 'id="blocked"', "<h3>lr choices</h3>"):
        assert marker in dom, marker
    assert re.search(
        r'class="health".*?<tbody><tr><td>lr_bracketed</td><td>arm: dense / s1 / rlrs</td><td>fail</td>', dom, re.S
    )
    # The failed check's number (s1's speedup) is not in the headline, only under the failure.
    con = db_connect(built["db"])
    try:
        sp = analysis.compute(con, "demo")["speedup"]
    finally:
        con.close()
    s1 = f"{sp.filter((sp['size'] == 's1') & (sp['definition'] == 'ladder'))['speedup'][0] * 100:+.1f}%"
    headline = dom.split('id="headline"')[1].split("</table>")[0]
    assert s1 not in headline and "blocked by lr_bracketed" in headline
    assert s1 in dom.split('id="blocked"')[1].split("</table>")[0]
    # ... and the browser draws it hollow in the figures, s2's filled.
    for name in ("speedup_vs_size", "loss_gap_vs_size"):
        fig = re.search(rf'id="fig-{name}".*?</svg>', dom, re.S).group(0)
        assert {p["size"]: p["fill"] for p in svg_points(fig)} == {"s1": "white", "s2": "#4c78a8"}, name
    # A screenshot for people to look at (test-artifacts/ is git-ignored).
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "report.png"
    headless(built["path"], tmp_path / "profile2", "--window-size=1280,5200", f"--screenshot={shot}")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.browser
@pytest.mark.slow
def test_hostile_names_render_as_text_in_the_browser(tmp_path):
    path = full_study(study=XSS, arm=XSS_ARM).write(tmp_path / "x.duckdb")
    report.write_report(XSS, path, tmp_path / "out" / "index.html", figures=False)
    dom = headless(tmp_path / "out" / "index.html", tmp_path / "profile", "--dump-dom").stdout
    status = rendered_status(dom)
    assert status["rendered"] == str(len(ALL_FIGURES)) and status["errors"] == "0", status["text"]
    # The name is visible text in the heading; no injected element exists.
    assert "<h1>RLRS study report: &lt;script&gt;alert(1)&lt;/script&gt;</h1>" in dom
    # The arm name stayed text: outside our script bodies no <img> element exists.
    assert "<img" not in re.sub(r"<script[^>]*>.*?</script>", "", dom, flags=re.S)
    assert "&lt;img src=x onerror=alert(2)&gt;" in dom


def test_a_thousand_run_study_stays_small_and_under_the_chart_row_limit(tmp_path):
    db = large_study(seeds=6)
    assert len(db.runs) >= 1000
    path = db.write(tmp_path / "big.duckdb")
    t0 = time.perf_counter()
    built = report.write_report("big", path, tmp_path / "out" / "index.html", figures=False)
    seconds = time.perf_counter() - t0
    size_mb = (tmp_path / "out" / "index.html").stat().st_size / 1e6
    assert size_mb < 5, size_mb
    assert sorted(built.figures) == sorted(ALL_FIGURES)
    for name, spec in built.figures.items():
        rows = sum(len(v) for v in spec.get("datasets", {}).values())
        assert 0 < rows < 5000, (name, rows)
    assert seconds < 60


def test_script_json_cannot_close_its_script_element_and_has_no_nan():
    assert report.script_json({"a": float("nan"), "b": "</script><!--", "c": [float("inf"), 1.5]}) == (
        '{"a":null,"b":"\\u003c/script\\u003e\\u003c!--","c":[null,1.5]}'
    )


def headline_row(**kw) -> dict:
    row = {
        "definition": "ladder",
        "speedup": None,
        "ci_low": None,
        "ci_high": None,
        "bound": None,
        "method": "point",
        "n_pairs": 1,
    }
    return row | kw


def test_headline_cells_for_intervals_open_ends_and_bounds():
    slower = headline_row(speedup=-0.2, ci_low=-0.4, ci_high=-0.1, method="paired-bootstrap", n_pairs=3)
    assert report_health.speedup_text(slower) == "-20.0% [-40.0%, -10.0%] (ladder, paired-bootstrap, n=3)"
    open_end = headline_row(speedup=0.5, ci_low=0.2, method="paired-bootstrap", n_pairs=5)
    assert report_health.speedup_text(open_end) == "+50.0% [+20.0%, …] (ladder, paired-bootstrap, n=5)"
    assert report_health.speedup_text(headline_row(speedup=0.1)) == "+10.0% (ladder, point, n=1)"
    beyond = headline_row(bound="> 1.00", definition="target")
    assert report_health.speedup_text(beyond) == "bound > 1.00 (target; outside the baseline's runs, not extrapolated)"
    assert report_health.speedup_text(headline_row()) == "—"
