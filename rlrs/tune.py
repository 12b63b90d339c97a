"""Tune small, transfer large: the greedy local search of the spec (section 4).

`rlrs tune STUDY.yaml` searches, for every (tuning size, arm) of the study's
`tune:` block, then transfers: the tuned settings replace the arm's settings
at every size of that model family (dense or MoE) in the study's ordinary
sweeps (main, lr, ladder, ...), which Snakemake then trains, collects and
reports.

The search, per (size, arm):

- parameters: the globals lr, init_scale, final_lr_fraction, weight_decay
  (space `global`, the baseline's), plus `<component>.start` and
  `<component>.end` of every component the model has, norm excluded (space
  `relative`); the study may restrict them (`tune.parameters`).
- start from the arm's own settings at the tuning size; score = a summary.json
  field (train_loss_last100 by default: the mean train loss of the last 100
  steps), lower is better; a diverged run scores +inf.
- each pass visits the parameters in a seeded random order; for parameter p
  it launches one run per factor (0.2, 2/3, 3/2, 5) in parallel through the
  study's executor and accepts the best candidate if it beats the best score
  so far (strictly; ties go to the earlier factor).
- stop after a pass without improvement, after `max_passes`, or when the next
  batch would exceed `max_runs` (distinct runs, the start run included).

Every candidate is an ordinary run with an id in results/<study>/runs/<id>/,
so the search is its own checkpoint: a restarted search recomputes the same
decisions (seeded order, rounded values, hence the same run ids) and finds
every finished run already there (rlrs.launch.submit skips a terminal run).
What is spent is counted from the search's decisions, never from what is on
disk, so an interrupted-then-resumed search and an uninterrupted one write the
same result. The result, trajectory and final settings, goes atomically to
results/<study>/tune/<size>.<arm>.json; `rlrs collect` loads it into the
tables `tune_trajectory` and `tuned`.
"""

from __future__ import annotations

import copy
import fcntl
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from rlrs import atomic
from rlrs.errors import ConfigError
from rlrs.study import (
    REPO_ROOT,
    executor_settings,
    load_study,
    results_dir,
    size_family,
)

# Global settings and where each lives in a run config.
GLOBALS = {
    "lr": ("optim", "lr"),
    "init_scale": ("model", "init_scale"),
    "final_lr_fraction": ("schedule", "final_lr_fraction"),
    "weight_decay": ("optim", "weight_decay"),
}
SPACES = ("global", "relative")
SCORES = ("train_loss_last100", "final_eval_loss")
DEFAULTS = {"factors": [0.2, 2 / 3, 1.5, 5.0], "max_passes": 20, "max_runs": None, "score": "train_loss_last100", "seed": 0}
# Candidate values are rounded to this many significant digits, so a value
# reached along two paths (x3/2 then x2/3) is the same number, hence the same run id.
SIGNIFICANT = 6
RESULT_VERSION = 1

# The paper's tuned multipliers (spec section 3), for the report's comparison.
PAPER_MULTIPLIERS = {
    "moe": {
        "embedding": {"start": 5.0, "end": 0.666},
        "head": {"start": 0.666, "end": 0.444},
        "router": {"start": 0.666, "end": 1.0},
        "experts": {"start": 0.3, "end": 1.125},
        "attention": {"start": 1.0, "end": 1.0},
    },
    "dense": {
        "embedding": {"start": 5.0, "end": 0.667},
        "head": {"start": 1.0, "end": 0.444},
        "ffn": {"start": 1.0, "end": 0.667},
        "attention": {"start": 1.0, "end": 0.2},
    },
}
# The paper's global settings; given for its MoE configs only (spec section 3).
PAPER_GLOBALS = {"moe": {"lr": 3e-3, "final_lr_fraction": 0.0444, "weight_decay": 0.1, "init_scale": 0.15}}


class TuneError(RuntimeError):
    """A search cannot go on (a candidate run failed, not diverged)."""


def rounded(x: float) -> float:
    return float(f"{x:.{SIGNIFICANT}g}")


# ------------------------------------------------------------ settings


def components_of(resolved: dict) -> list[str]:
    """The components with a relative rate in this model (norm is always (1, 1))."""
    return [c for c in resolved["schedule"]["multipliers"] if c != "norm"]


def space_parameters(resolved: dict, space: str) -> list[str]:
    """Every parameter of a search space, in a fixed order."""
    names = list(GLOBALS)
    if space == "relative":
        names += [f"{c}.{which}" for c in components_of(resolved) for which in ("start", "end")]
    return names


def settings_of(resolved: dict, names: list[str]) -> dict[str, float]:
    """The current value of each named parameter in a resolved run config."""
    out = {}
    for name in names:
        if name in GLOBALS:
            block, key = GLOBALS[name]
            out[name] = float(resolved[block][key])
        else:
            comp, which = name.split(".")
            out[name] = float(resolved["schedule"]["multipliers"][comp][which])
    return out


def apply_settings(raw: dict, settings: dict[str, float]) -> dict:
    """A copy of a raw run config with the given parameters set. A component
    missing from the raw table starts at (1, 1)."""
    raw = copy.deepcopy(raw)
    for name, value in settings.items():
        if name in GLOBALS:
            block, key = GLOBALS[name]
            raw.setdefault(block, {})[key] = value
        else:
            comp, which = name.split(".")
            table = raw.setdefault("schedule", {}).setdefault("multipliers", {})
            table.setdefault(comp, {"start": 1.0, "end": 1.0})[which] = value
    return raw


# ------------------------------------------------------------ the tune block


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
        return (root or results_dir(self.study)) / "tune" / f"{self.key}.json"

    def run_budget(self) -> int:
        """The most runs this search can spend."""
        cap = 1 + self.max_passes * len(self.parameters) * len(self.factors)
        return min(cap, self.max_runs) if self.max_runs else cap

    def digest(self) -> str:
        """Changes whenever the search would decide differently: a result
        with another digest is stale (the study changed) and is ignored."""
        from rlrs.config import resolve, run_id

        body = {
            "start_run": run_id(resolve(self.base_raw)), "space": self.space, "parameters": self.parameters,
            "factors": self.factors, "max_passes": self.max_passes, "max_runs": self.max_runs,
            "score": self.score, "seed": self.seed,
        }
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]

    def candidate(self, settings: dict[str, float]) -> tuple[str, dict]:
        """(run id, resolved config) of the run with these settings."""
        from rlrs.config import resolve, run_id

        resolved = resolve(apply_settings(self.base_raw, settings))
        return run_id(resolved), resolved


def check_tune(study: dict) -> None:
    """Cross-field checks of the tune block (the schema checked the types)."""
    tune = study.get("tune")
    if not tune:
        return
    sizes, arms = study["sizes"], study["arms"]
    families: dict[str, str] = {}
    for i, s in enumerate(tune["sizes"]):
        if s not in sizes:
            raise ConfigError(f"tune.sizes[{i}]", f"unknown size {s!r}; sizes of this study: {', '.join(sizes)}")
        fam = size_family(study, s)
        if fam in families:
            raise ConfigError(f"tune.sizes[{i}]", f"{s!r} is a second {fam} size (after {families[fam]!r}); "
                              "tune at one size per model family (dense, moe)")
        families[fam] = s
    for a in tune["arms"]:
        if a not in arms:
            raise ConfigError(f"tune.arms.{a}", f"unknown arm {a!r}; arms of this study: {', '.join(arms)}")
    allowed = list(GLOBALS) + [f"{c}.{w}" for c in ("embedding", "attention", "ffn", "router", "experts", "head")
                               for w in ("start", "end")]
    for i, p in enumerate(tune.get("parameters", [])):
        if p not in allowed:
            raise ConfigError(f"tune.parameters[{i}]", f"unknown parameter {p!r}; allowed: {', '.join(allowed)}")


def searches(study: dict) -> list[Search]:
    """The study's searches, one per (tuning size, arm), in file order."""
    from rlrs.study import _Expander, check_study

    study = check_study(study, default_name=study.get("study"))
    tune = study.get("tune")
    if not tune:
        return []
    settings = {**DEFAULTS, **tune}
    ex = _Expander(study)
    out = []
    for size in tune["sizes"]:
        for arm, space in tune["arms"].items():
            cell = ex.cell(size, arm, settings["seed"])
            names = space_parameters(cell.resolved, space)
            if "parameters" in tune:  # restricted; a component this model lacks is skipped
                names = [n for n in names if n in tune["parameters"]]
                if not names:
                    raise ConfigError("tune.parameters", f"none of them is in the {space} space of {size!r} x {arm!r}; "
                                      f"allowed there: {', '.join(space_parameters(cell.resolved, space))}")
            out.append(Search(
                study=study["study"], size=size, family=size_family(study, size), arm=arm, space=space,
                parameters=names, factors=[float(f) for f in settings["factors"]],
                max_passes=settings["max_passes"], max_runs=settings["max_runs"], score=settings["score"],
                seed=settings["seed"], base_raw=cell.raw, start=settings_of(cell.resolved, names),
            ))
    return out


# ------------------------------------------------------------ state for the plan


@dataclass
class TuneState:
    """What the study expansion needs from the searches: the tuned settings
    per (family, arm), the families still waiting for a search (their sizes
    are left out of the plan until then), and the search runs themselves."""

    tuned: dict[tuple[str, str], dict[str, float]] = field(default_factory=dict)
    pending: set[str] = field(default_factory=set)  # families
    runs: list[tuple[Search, str, dict, dict]] = field(default_factory=list)  # (search, run_id, settings, tags)


def read_result(search: Search, root: Path | None = None) -> dict | None:
    """The search's finished result, or None when absent, unfinished or stale."""
    try:
        doc = json.loads(search.result_path(root).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    if doc.get("status") != "done" or doc.get("digest") != search.digest() or doc.get("version") != RESULT_VERSION:
        return None
    return doc


def load_state(study: dict, root: Path | None = None, assume_done: bool = False) -> TuneState:
    """The tune state of a study from its results/<study>/tune/ folder.
    assume_done: pretend every pending search ended at its start point (for
    cost estimates of the transfer before tuning)."""
    state = TuneState()
    for s in searches(study):
        doc = read_result(s, root)
        if doc is None:
            if assume_done:
                state.tuned[(s.family, s.arm)] = dict(s.start)
            else:
                state.pending.add(s.family)
            continue
        # Global-space arms keep their own table; relative ones get theirs complete.
        state.tuned[(s.family, s.arm)] = dict(doc["final"])
        for row in doc["trajectory"]:
            tags = {k: row[k] for k in ("pass", "parameter", "factor")} | {"step": row["step"]}
            state.runs.append((s, row["run_id"], doc["runs"][row["run_id"]], tags))
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


# ------------------------------------------------------------ the search


def read_score(run_dir: Path, score: str) -> tuple[float | None, str]:
    """(score or None, status) of a finished run; None = diverged or not finite."""
    summary = json.loads((run_dir / "summary.json").read_text())
    value = summary.get(score) if summary.get("status") == "completed" else None
    if value is None or value != value or value in (float("inf"), float("-inf")):
        return None, summary.get("status")
    return float(value), summary["status"]


def _better(a: float | None, b: float | None) -> bool:
    """a strictly better than b; None (diverged) is worst."""
    return a is not None and (b is None or a < b)


class Runner:
    """Trains a batch of a search's candidates through the study's executor."""

    def __init__(self, runs_dir: Path, settings: dict, kind: str):
        self.runs_dir, self.settings, self.kind = runs_dir, settings, kind

    def __call__(self, configs: dict[str, dict]) -> None:
        from rlrs.launch import submit

        dirs = [self.runs_dir / rid for rid in configs]
        # One job per candidate whatever executor.runs_per_job says: the
        # candidates of a step run in parallel.
        code = submit(dirs, configs, self.settings, self.kind, runs_per_job=1)
        if code != 0:
            failed = [d.name for d in dirs if not (d / "summary.json").exists()
                      or json.loads((d / "summary.json").read_text()).get("status") not in ("completed", "diverged")]
            raise TuneError(f"candidate run(s) failed: {', '.join(failed) or '?'} (see failure.json in their "
                            f"run directories under {self.runs_dir}); rerun `rlrs tune` to retry them")


def run_search(search: Search, runner: Runner, runs_dir: Path, log=print) -> dict:
    """The greedy local search; returns (and writes) its result document."""
    current = dict(search.start)
    runs: dict[str, dict] = {}  # run_id -> settings, in order of first request
    scores: dict[str, tuple[float | None, str]] = {}
    trajectory: list[dict] = []

    def candidate(p: int, name: str | None, factor: float | None) -> dict:
        """One candidate: the current settings with `name` scaled by `factor`."""
        value = rounded(current[name] * factor) if name is not None else None
        settings = {**current, name: value} if name is not None else dict(current)
        rid, resolved = search.candidate(settings)
        resolved["meta"] = {"study": search.study, "size": search.size, "arm": search.arm, "sweep": "tune",
                            "tags": {"pass": p, "parameter": name, "factor": factor}}
        return {"pass": p, "parameter": name, "value": value, "previous": current.get(name), "factor": factor,
                "settings": settings, "run_id": rid, "config": resolved}

    def evaluate(batch: list[dict]) -> None:
        """Train the batch's new run ids (in parallel), then read every score."""
        todo = {}
        for c in batch:
            if c["run_id"] not in runs:
                runs[c["run_id"]] = c["settings"]
                todo[c["run_id"]] = c["config"]
        if todo:
            runner(todo)
        for c in batch:
            if c["run_id"] not in scores:
                scores[c["run_id"]] = read_score(runs_dir / c["run_id"], search.score)
            c["score"], c["status"] = scores[c["run_id"]]

    def record(batch: list[dict], accepted: dict | None, best: float | None) -> None:
        for c in batch:
            trajectory.append({
                "step": len(trajectory), "pass": c["pass"], "parameter": c["parameter"], "value": c["value"],
                "previous": c["previous"], "factor": c["factor"], "run_id": c["run_id"], "score": c["score"],
                "status": c["status"], "accepted": c is accepted, "best_score": best, "runs_spent": len(runs),
            })

    def write(status: str, stop: str | None, best: float | None, best_run: str | None, passes: int) -> dict:
        doc = {
            "version": RESULT_VERSION, "status": status, "stop_reason": stop, "study": search.study,
            "size": search.size, "family": search.family, "arm": search.arm, "space": search.space,
            "digest": search.digest(),
            "search": {k: getattr(search, k) for k in ("parameters", "factors", "max_passes", "max_runs", "score", "seed")},
            "passes": passes, "runs_spent": len(runs), "best_score": best, "best_run_id": best_run,
            "start": search.start, "final": current, "runs": runs, "trajectory": trajectory,
        }
        atomic.write_json(search.result_path(runs_dir.parent), doc)
        return doc

    start = candidate(0, None, None)
    evaluate([start])
    best, best_run = start["score"], start["run_id"]
    record([start], start, best)
    log(f"[tune {search.key}] start: {search.score} {best} ({start['run_id']})")
    stop, passes = "max_passes", 0
    for p in range(1, search.max_passes + 1):
        passes = p
        order = list(search.parameters)
        random.Random(f"{search.seed}-{search.size}-{search.arm}-{p}").shuffle(order)
        improved = out_of_budget = False
        for name in order:
            batch = [candidate(p, name, f) for f in search.factors]
            # The budget counts distinct runs the search asked for (a revisited
            # point is free): decided from the search alone, never from disk.
            new = {c["run_id"] for c in batch} - set(runs)
            if search.max_runs is not None and len(runs) + len(new) > search.max_runs:
                out_of_budget = True
                break
            evaluate(batch)
            # Best candidate; ties go to the earlier factor (min keeps the first).
            top = min(batch, key=lambda c: (c["score"] is None, c["score"] if c["score"] is not None else 0.0))
            accepted = top if _better(top["score"], best) else None
            if accepted is not None:
                current[name] = accepted["value"]
                best, best_run, improved = accepted["score"], accepted["run_id"], True
            record(batch, accepted, best)
            log(f"[tune {search.key}] pass {p} {name}: "
                + ", ".join(f"x{c['factor']:.3g} {c['score'] if c['score'] is None else round(c['score'], 4)}" for c in batch)
                + (f" -> {name} = {current[name]:g}" if accepted else " (kept)") + f"; {len(runs)} runs")
            write("running", None, best, best_run, p)
        if out_of_budget:
            stop = "max_runs"
            break
        if not improved:
            stop = "converged"
            break
    doc = write("done", stop, best, best_run, passes)
    log(f"[tune {search.key}] done ({stop}): {search.score} {best} after {passes} pass(es), {len(runs)} runs")
    return doc


class _Lock:
    """One search process per study at a time (two would train the same run
    directories at once). An flock: the kernel releases it when the holder
    dies, even by SIGKILL."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.fd = path, None

    def __enter__(self):
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            raise TuneError(f"another `rlrs tune` holds {self.path}; wait for it to finish") from None
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


def tune(study: dict, executor: str | None = None, log=print) -> list[dict]:
    """Run (or resume, or skip) every search of the study; returns the results."""
    todo = searches(study)
    if not todo:
        raise ConfigError("tune", "the study has no tune block (see README: Tune small, transfer large)")
    settings = executor_settings(study)
    kind = executor or settings["kind"]
    root = results_dir(todo[0].study)
    runner = Runner(root / "runs", settings, kind)
    out = []
    with _Lock(root / "tune" / ".lock"):
        for s in todo:
            doc = read_result(s)
            if doc is not None:
                log(f"[tune {s.key}] already done ({doc['stop_reason']}): {s.score} {doc['best_score']}")
            else:
                doc = run_search(s, runner, root / "runs", log=log)
            out.append(doc)
    return out


def transfer(study_path: Path, cores: int | None = None) -> int:
    """Train, collect and report the study with the tuned settings: the
    workflow's own targets, so `rlrs tune` and `snakemake` share one path."""
    cores = cores or os.cpu_count() or 1
    exe = shutil.which("snakemake", path=str(Path(sys.executable).parent)) or shutil.which("snakemake")
    if exe is None:
        raise TuneError("snakemake is not on PATH; run the transfer with `snakemake -c N --configfile STUDY`")
    cmd = [exe, "-s", str(REPO_ROOT / "Snakefile"), "-d", os.getcwd(), "-c", str(cores),
           "--configfile", str(Path(study_path).resolve())]
    print("transfer: " + " ".join(cmd), flush=True)
    return subprocess.run(cmd).returncode


def cli_tune(study_path: Path, executor: str | None = None, search_only: bool = False, cores: int | None = None) -> int:
    """`rlrs tune STUDY.yaml [--search-only] [--executor KIND] [--cores N]`."""
    try:
        study = load_study(study_path)
        tune(study, executor=executor, log=lambda m: print(m, flush=True))
    except ConfigError as e:
        print(f"rlrs tune: error: {study_path}: {e}", file=sys.stderr)
        return 2
    except TuneError as e:
        print(f"rlrs tune: error: {e}", file=sys.stderr)
        return 1
    if search_only:
        return 0
    try:
        return transfer(study_path, cores)
    except TuneError as e:
        print(f"rlrs tune: error: {e}", file=sys.stderr)
        return 1
