"""Reading a stage's result file (a search's tune/<key>.json, a cell's
select/<key>.json): the document counts only when it is finished (status
`done`), written for the same inputs (digest) and by the same format
(version); anything else is absent to the caller, which then runs the stage.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path


def read_done(path: Path, digest: str, version: int) -> dict | None:
    """The finished, current document at `path`, or None (absent, unreadable,
    unfinished, stale or of another format version)."""
    try:
        doc = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    if doc.get("status") != "done" or doc.get("digest") != digest or doc.get("version") != version:
        return None
    return doc


def first_done(paths: Iterable[Path], digest: str, version: int) -> dict | None:
    """The first finished, current document of `paths` (a study's own result,
    then other studies' results of the same stage: reuse_runs_from)."""
    return next((doc for p in paths if (doc := read_done(p, digest, version)) is not None), None)
