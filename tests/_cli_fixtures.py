"""The `rlrs` commands called as a user types them (rlrs.cli.main with an
argv), under the keyword names the tests use."""

from __future__ import annotations

from pathlib import Path

from rlrs.cli import main


def _opt(flag: str, value) -> list[str]:
    return [] if value is None else [flag, str(value)]


def cli_collect(db: Path, run_dirs=(), runs_root=None, study=None, plan=None) -> int:
    return main(
        [
            "collect",
            "--db",
            str(db),
            *map(str, run_dirs),
            *_opt("--runs-root", runs_root),
            *_opt("--study", study),
            *_opt("--plan", plan),
        ]
    )


def cli_query(sql: str, db=None, fmt: str = "table") -> int:
    return main(["query", sql, *_opt("--db", db), "--format", fmt])


def cli_plan(study: Path) -> int:
    return main(["plan", str(study)])


def cli_status(study: Path) -> int:
    return main(["status", str(study)])


def cli_submit(run_dirs, study=None, executor=None, plan=None) -> int:
    return main(
        ["submit", *map(str, run_dirs), *_opt("--study", study), *_opt("--executor", executor), *_opt("--plan", plan)]
    )


def cli_report(study: str, db=None, out=None) -> int:
    return main(["report", study, *_opt("--db", db), *_opt("--out", out)])
