"""Stage 1 of a staged study as data: one selection Cell per (size, arm) of
its `sweeps.lr`, their results on disk (results/<study>/select/), and the
state the expansion needs from them (rlrs.study.expand). Running a
selection is rlrs.select's; the decision itself is rlrs.study.bracketing's.

A cell's first grid is the arm's base lr at that size under the study's
`lr_rule` (rlrs.study.lr_rules; by default its lr there, the tuned lr where
the family was tuned) times each of `sweeps.lr.factors` (and 1), on the study's
`selection_seeds`; bracketing adds a point beyond the best edge, up to
`sweeps.lr.bracket.max_extra_points`, each `bracket.factor` (default: the
grid's step) beyond the last.

Result file, results/<study>/select/<size>.<arm>.json (version 1; the
interface with the analysis, /work/notes/select-interface.md):
status, study, size, family, arm, centre_lr, factor, selection_seeds,
max_extra_points, points [{lr, lr_factor, runs {seed: run_id}, losses
{seed: loss | null (diverged)}}], chosen_lr, bracketed, cap_reached,
failed, n_extra, ranked_on, note, digest. `failed` (no lr trained: every
point diverged down to the cap) is an outcome, not a wait: the size is
left out of stage 2 (SelectState.failed), `rlrs plan` and `rlrs status`
say so, and check 2 fails the cell. A document written before `failed`
existed reads as failed when its chosen_lr is null (`is_failed`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from rlrs import paths, tags
from rlrs.config import resolve, run_id
from rlrs.study.bracketing import lr_key
from rlrs.study.expand import Expander, _with_centre
from rlrs.study.searches import load_state as load_tune_state
from rlrs.study.stage_result import first_done
from rlrs.study.validate import STAGE_DEFAULTS, check_study, deep_merge, is_staged, size_family

RESULT_VERSION = 1


@dataclass
class Cell:
    """One (size, arm) lr selection, fully specified."""

    study: str
    size: str
    family: str  # dense | moe
    arm: str
    centre_lr: float
    factors: list[float]  # the first grid, as factors of the centre (1 included)
    factor: float  # the step beyond an edge
    selection_seeds: list[int]
    max_extra_points: int
    base_raw: dict  # the arm's raw run config at this size (tuned settings applied), seed unset

    @property
    def key(self) -> str:
        return f"{self.size}.{self.arm}"

    @property
    def grid(self) -> list[float]:
        return [lr_key(self.centre_lr * f) for f in self.factors]

    def result_path(self, root: Path | None = None) -> Path:
        return paths.select_dir(self.study, root) / f"{self.key}.json"

    def lr_factor(self, lr: float) -> float:
        return lr_key(lr / self.centre_lr)

    def candidate(self, lr: float, seed: int) -> tuple[str, dict]:
        """(run id, resolved config with its labels) of the selection run at lr and seed."""
        raw = deep_merge(self.base_raw, {"optim": {"lr": lr}, "seed": seed})
        resolved = resolve(raw)
        resolved["meta"] = {
            "study": self.study,
            "size": self.size,
            "arm": self.arm,
            "sweep": tags.LR,
            "tags": tags.select(lr, self.lr_factor(lr)),
        }
        return run_id(resolved), resolved

    def digest(self) -> str:
        """Changes whenever the selection would decide differently: a result
        with another digest is stale (the study or its tuning changed)."""
        body = {
            "centre_run": run_id(resolve(deep_merge(self.base_raw, {"seed": 0}))),
            "factors": self.factors,
            "factor": self.factor,
            "selection_seeds": self.selection_seeds,
            "max_extra_points": self.max_extra_points,
        }
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


def grid_step(factors: list[float]) -> float:
    """The grid's mean step: (max / min) ** (1 / (points - 1))."""
    return lr_key((max(factors) / min(factors)) ** (1 / (len(factors) - 1)))


def cells(study: dict, tuned: dict | None = None) -> list[Cell]:
    """The study's selection cells, one per (size, arm) of sweeps.lr, in
    study order (none for an unstaged study). tuned: (family, arm) ->
    settings of the finished searches (rlrs.study.searches.TuneState.tuned)."""
    study = check_study(study, default_name=study.get("study"))
    if not is_staged(study):
        return []
    sw = study["sweeps"]["lr"]
    bracket = sw.get("bracket") or {}
    ex = Expander(study, tuned=tuned or {})
    out = []
    for size in sw.get("sizes", list(study["sizes"])):
        factors = _with_centre(sw.get("per_size", {}).get(size, sw)["factors"])
        for arm in sw.get("arms", list(study["arms"])):
            cell = ex.cell(size, arm, 0)
            raw = dict(cell.raw)
            raw.pop("seed")
            out.append(
                Cell(
                    study=study["study"],
                    size=size,
                    family=size_family(study, size),
                    arm=arm,
                    centre_lr=float(cell.resolved["optim"]["lr"]),
                    factors=factors,
                    factor=float(bracket.get("factor", grid_step(factors))),
                    selection_seeds=list(study["selection_seeds"]),
                    max_extra_points=int(bracket.get("max_extra_points", STAGE_DEFAULTS["max_extra_points"])),
                    base_raw=raw,
                )
            )
    return out


def read_result(cell: Cell, root: Path | None = None, replay: tuple = ()) -> dict | None:
    """The cell's finished, current result, or None (absent, running or stale);
    replay: other studies' results/<study>/ folders tried after `root`."""
    return first_done([cell.result_path(r) for r in (root, *replay)], cell.digest(), RESULT_VERSION)


def is_failed(doc: dict) -> bool:
    """A finished selection that chose no lr (every point diverged)."""
    return bool(doc.get("failed", doc.get("chosen_lr") is None))


@dataclass
class SelectState:
    """What the expansion needs from stage 1: each cell's chosen lr, the
    sizes still waiting for a selection (left out of stage 2 until then),
    the cells whose selection failed (their sizes left out for good), and
    the selection runs themselves."""

    chosen: dict[tuple[str, str], float] = field(default_factory=dict)  # (size, arm) -> lr
    pending: set[str] = field(default_factory=set)  # sizes
    failed: dict[tuple[str, str], str] = field(default_factory=dict)  # (size, arm) -> why (the result's note)
    runs: list[tuple[Cell, float, int]] = field(default_factory=list)  # (cell, lr, seed)

    @property
    def failed_sizes(self) -> set[str]:
        """Sizes with a failed cell: nothing to compare there, so not measured."""
        return {size for size, _ in self.failed}


def load_state(
    study: dict, tune_state=None, root: Path | None = None, assume_done: bool = False, replay: tuple = ()
) -> SelectState:
    """The selection state of a staged study from results/<study>/select/.
    tune_state: the study's TuneState (a family still tuning has every size
    pending). assume_done: pretend every pending cell chose its centre (for
    cost estimates before stage 1). replay: other studies' results/<study>/
    folders whose finished result of the same cell (same digest) stands in for
    a missing one (reuse_runs_from; for cost estimates)."""
    study = check_study(study, default_name=study.get("study"))
    state = SelectState()
    tuning = tune_state.pending if tune_state is not None else set()
    for c in cells(study, tune_state.tuned if tune_state is not None else None):
        if c.family in tuning:
            state.pending.add(c.size)
            continue
        doc = read_result(c, root, replay)
        if doc is None:
            if assume_done:
                state.chosen[(c.size, c.arm)] = c.centre_lr
            else:
                state.pending.add(c.size)
            continue
        if is_failed(doc):  # every point diverged: the size cannot be measured, and is not waited for
            state.failed[(c.size, c.arm)] = doc.get("note") or "no lr trained"
        else:
            state.chosen[(c.size, c.arm)] = float(doc["chosen_lr"])
        for point in doc["points"]:
            state.runs += [(c, float(point["lr"]), int(s)) for s in point["runs"]]
    return state


def finished_results(study: dict, root: Path | None = None) -> list[dict]:
    """The finished, current result of every selection cell (root: results/<study>/).
    Cells of a family still tuning are skipped (their centre is not known)."""
    state = load_tune_state(study, root) if study.get("tune") else None
    tuned = state.tuned if state is not None else None
    pending = state.pending if state is not None else set()
    return [d for c in cells(study, tuned) if c.family not in pending and (d := read_result(c, root)) is not None]


def result_paths(study: dict) -> list[str]:
    """The result files a study's select step writes (none unless staged)."""
    study = check_study(study, default_name=study.get("study"))
    if not is_staged(study):
        return []
    sw = study["sweeps"]["lr"]
    root = paths.select_dir(study["study"])
    return [
        str(root / f"{size}.{arm}.json")
        for size in sw.get("sizes", list(study["sizes"]))
        for arm in sw.get("arms", list(study["arms"]))
    ]


def select_digest(study: dict) -> str:
    """One digest over the selection's definition (a Snakemake params trigger;
    tuning changes reach the select step through its input, the tune results)."""
    study = check_study(study, default_name=study.get("study"))
    body = {k: study.get(k) for k in ("selection_seeds", "defaults", "sizes", "arms")}
    body["lr"] = (study.get("sweeps") or {}).get("lr")
    if "lr_rule" in study:  # the grids' centres (absent: the digest of before the rule existed)
        body["lr_rule"] = study["lr_rule"]
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]
