"""A study's tuning searches as data: one Search per (tuning size, arm) of
its `tune:` block, their results on disk (results/<study>/tune/), and the
state the expansion needs from them (rlrs.study.expand). Running a search
is rlrs.tune's."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from rlrs import paths, tags
from rlrs.config import resolve, run_id
from rlrs.errors import ConfigError
from rlrs.study.expand import Expander
from rlrs.study.stage_result import first_done
from rlrs.study.validate import check_study, size_family
from rlrs.tunables import apply_settings, settings_of, space_parameters

SCORES = ("train_loss_last100", "final_eval_loss")
DEFAULTS = {
    "factors": [0.2, 2 / 3, 1.5, 5.0],
    "max_passes": 20,
    "max_runs": None,
    "score": "train_loss_last100",
    "seed": 0,
}
RESULT_VERSION = 1


@dataclass
class Search:
    """One (tuning size, arm) search, fully specified."""

    study: str
    size: str
    family: str  # dense | moe
    arm: str
    space: str  # global | relative
    parameters: list[str]
    factors: list[float]
    max_passes: int
    max_runs: int | None
    score: str
    seed: int
    base_raw: dict  # the arm's raw run config at the tuning size (before tuning)
    start: dict[str, float]  # the arm's own values of the parameters

    @property
    def key(self) -> str:
        return f"{self.size}.{self.arm}"

    def result_path(self, root: Path | None = None) -> Path:
        return paths.tune_dir(self.study, root) / f"{self.key}.json"

    def run_budget(self) -> int:
        """The most runs this search can spend."""
        cap = 1 + self.max_passes * len(self.parameters) * len(self.factors)
        return min(cap, self.max_runs) if self.max_runs else cap

    def digest(self) -> str:
        """Changes whenever the search would decide differently: a result
        with another digest is stale (the study changed) and is ignored."""
        body = {
            "start_run": run_id(resolve(self.base_raw)),
            "space": self.space,
            "parameters": self.parameters,
            "factors": self.factors,
            "max_passes": self.max_passes,
            "max_runs": self.max_runs,
            "score": self.score,
            "seed": self.seed,
        }
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]

    def candidate(self, settings: dict[str, float]) -> tuple[str, dict]:
        """(run id, resolved config) of the run with these settings."""
        resolved = resolve(apply_settings(self.base_raw, settings))
        return run_id(resolved), resolved


def searches(study: dict) -> list[Search]:
    """The study's searches, one per (tuning size, arm), in file order."""
    study = check_study(study, default_name=study.get("study"))
    tune = study.get("tune")
    if not tune:
        return []
    settings = {**DEFAULTS, **tune}
    ex = Expander(study)
    out = []
    for size in tune["sizes"]:
        for arm, space in tune["arms"].items():
            cell = ex.cell(size, arm, settings["seed"])
            names = space_parameters(cell.resolved, space)
            if "parameters" in tune:  # restricted; a component this model lacks is skipped
                names = [n for n in names if n in tune["parameters"]]
                if not names:
                    raise ConfigError(
                        "tune.parameters",
                        f"none of them is in the {space} space of {size!r} x {arm!r}; "
                        f"allowed there: {', '.join(space_parameters(cell.resolved, space))}",
                    )
            out.append(
                Search(
                    study=study["study"],
                    size=size,
                    family=size_family(study, size),
                    arm=arm,
                    space=space,
                    parameters=names,
                    factors=[float(f) for f in settings["factors"]],
                    max_passes=settings["max_passes"],
                    max_runs=settings["max_runs"],
                    score=settings["score"],
                    seed=settings["seed"],
                    base_raw=cell.raw,
                    start=settings_of(cell.resolved, names),
                )
            )
    return out


@dataclass
class TuneState:
    """What the study expansion needs from the searches: the tuned settings
    per (family, arm), the families still waiting for a search (their sizes
    are left out of the plan until then), and the search runs themselves."""

    tuned: dict[tuple[str, str], dict[str, float]] = field(default_factory=dict)
    pending: set[str] = field(default_factory=set)  # families
    runs: list[tuple[Search, str, dict, dict]] = field(default_factory=list)  # (search, run_id, settings, tags)


def read_result(search: Search, root: Path | None = None, replay: tuple = ()) -> dict | None:
    """The search's finished result, or None when absent, unfinished or stale;
    replay: other studies' results/<study>/ folders tried after `root`."""
    return first_done([search.result_path(r) for r in (root, *replay)], search.digest(), RESULT_VERSION)


def load_state(study: dict, root: Path | None = None, assume_done: bool = False, replay: tuple = ()) -> TuneState:
    """The tune state of a study from its results/<study>/tune/ folder.
    assume_done: pretend every pending search ended at its start point (for
    cost estimates of the transfer before tuning). replay: other studies'
    results/<study>/ folders whose finished result of the same search (same
    digest) stands in for a missing one: the search, replayed on their runs
    (reuse_runs_from), decides the same (for cost estimates)."""
    state = TuneState()
    for s in searches(study):
        doc = read_result(s, root, replay)
        if doc is None:
            if assume_done:
                state.tuned[(s.family, s.arm)] = dict(s.start)
            else:
                state.pending.add(s.family)
            continue
        # Global-space arms keep their own table; relative ones get theirs complete.
        state.tuned[(s.family, s.arm)] = dict(doc["final"])
        for row in doc["trajectory"]:
            run_tags = tags.tune(row["pass"], row["parameter"], row["factor"], step=row["step"])
            state.runs.append((s, row["run_id"], doc["runs"][row["run_id"]], run_tags))
    return state


def finished_results(study: dict, root: Path | None = None) -> list[dict]:
    """The finished, current result of every search of the study (root:
    results/<study>/)."""
    return [doc for s in searches(study) if (doc := read_result(s, root)) is not None]


def result_paths(study: dict) -> list[str]:
    """The search results a study's tune step writes (none without a tune block)."""
    return [str(s.result_path()) for s in searches(study)]


def tune_digest(study: dict) -> str:
    """One digest over every search: a Snakemake params trigger."""
    return hashlib.sha256(":".join(s.digest() for s in searches(study)).encode()).hexdigest()[:16]
