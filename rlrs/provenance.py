"""Where a record came from: when (UTC, ISO 8601 to the second) and from which
commit of the rlrs checkout the code runs (summary.json, launch and reuse records)."""

from __future__ import annotations

import datetime as dt
import subprocess
from pathlib import Path

import rlrs

_GIT_COMMIT: str | None | bool = False  # False: not looked up yet


def utc_now() -> str:
    """The current UTC time, e.g. 2026-12-01T13:40:02+00:00."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def git_commit() -> str | None:
    """The commit of the rlrs checkout this code runs from (None outside git)."""
    global _GIT_COMMIT
    if _GIT_COMMIT is False:
        try:
            here = Path(rlrs.__file__).resolve().parent
            out = subprocess.run(
                ["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
            )
            _GIT_COMMIT = out.stdout.strip() or None
        except (OSError, subprocess.SubprocessError):
            _GIT_COMMIT = None
    return _GIT_COMMIT
