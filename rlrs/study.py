"""Studies: a study file -> the resolved run configs it asks for.

A study names model sizes, schedule arms and the sweeps of the RLRS protocol
(spec sections 4-6). `expand()` turns it into one request per (sweep point,
seed): `(run_id, resolved_config, labels)`. Two requests with the same
resolved config have the same run id and are trained once; every label set
still goes to the plan, so the analysis finds a run under every sweep that
asked for it.

Checks happen in this order, all before anything is written: the JSON Schema
(`workflow/schemas/study.schema.yaml`, the same file Snakemake's `validate()`
reads), then relations between fields (a sweep naming a size or arm that does
not exist), then `rlrs.config.resolve()` on every expanded run config.

Light on purpose at import time: `rlrs submit` reads plans through this module
and must not pay for torch, so `rlrs.config` (which imports torch) is imported
only where a study is expanded.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import yaml

from rlrs import atomic
from rlrs.config import load_file
from rlrs.errors import ConfigError, check_schema

REPO_ROOT = Path(__file__).resolve().parent.parent
SCHEMA_PATH = REPO_ROOT / "workflow" / "schemas" / "study.schema.yaml"

# Where studies write: results/<study>/ and reports/<study>/ below these roots.
# Environment variables so the Snakefile, `rlrs status` and tests agree.
RESULTS_ENV = "RLRS_RESULTS"
REPORTS_ENV = "RLRS_REPORTS"

EXECUTOR_DEFAULTS = {"kind": "local", "timeout_min": 60, "runs_per_job": 1}
SWEEP_ORDER = ("tune", "main", "lr", "ladder", "usweep", "removal", "contribution")

# Run-time estimate for `rlrs plan`. Calibrated on this kind of machine (2
# cores, one torch thread per run, byte vocabulary, seq 128, batch 16; the
# stack notes' throughput table and the demo's measured CPU time): a step
# costs a fixed ~10 ms of Python/dispatch overhead plus its FLOPs at ~50
# GFLOP/s per thread, and a run ~2 s to start (job process, torch import).
# On cuda an effective 1e14 FLOP/s is assumed (bf16, ~30% of an H100's
# peak). Estimates only: MoE dispatch and small widths run slower.
CPU_FLOPS_PER_THREAD = 5e10
CPU_STEP_OVERHEAD_S = 0.010
RUN_START_S = 2.0
GPU_FLOPS = 1e14


def results_dir(study_name: str) -> Path:
    return Path(os.environ.get(RESULTS_ENV, "results")) / study_name


def reports_dir(study_name: str) -> Path:
    return Path(os.environ.get(REPORTS_ENV, "reports")) / study_name


# ------------------------------------------------------------------ helpers


def _deep_merge(base: dict, over: dict | None) -> dict:
    """`over` onto a copy of `base`: mappings merge, anything else replaces."""
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _num(x: float) -> float:
    """Round a product like 0.003 * 1.5 to 12 significant digits, so the same
    point reached by two sweeps hashes to the same run id."""
    return float(f"{x:.12g}")


# ------------------------------------------------------------- validation


@lru_cache(maxsize=1)
def _schema() -> dict:
    with open(SCHEMA_PATH) as f:
        return yaml.safe_load(f)


def validate_schema(raw) -> None:
    """Check a study against the JSON Schema; raise the most specific error."""
    if not isinstance(raw, dict):
        raise ConfigError("<study>", f"expected a mapping of study settings, got {type(raw).__name__}")
    check_schema(raw, _schema(), "<study>")


def check_study(raw: dict, default_name: str | None = None) -> dict:
    """Schema + cross-field checks. Returns the study with its name filled."""
    validate_schema(raw)
    study = copy.deepcopy(raw)
    if "study" not in study:
        if not default_name:
            raise ConfigError("study", "no study name: give `study:` or load the study from a file (name = file stem)")
        study["study"] = default_name
    _check_references(study)
    return study


def _check_references(study: dict) -> None:
    sizes, arms = study["sizes"], study["arms"]
    size_names, arm_names = ", ".join(sizes), ", ".join(arms)

    def need_size(where: str, name: str) -> None:
        if name not in sizes:
            raise ConfigError(where, f"unknown size {name!r}; sizes of this study: {size_names}")

    def need_arm(where: str, name: str) -> None:
        if name not in arms:
            raise ConfigError(where, f"unknown arm {name!r}; arms of this study: {arm_names}")

    # Multipliers live in the arm tables only: one place says what an arm is.
    blocks = [("defaults", study.get("defaults"))]
    blocks += [(f"sizes.{n}.overrides", s.get("overrides")) for n, s in sizes.items()]
    for n, a in arms.items():
        blocks.append((f"arms.{n}.overrides", a.get("overrides")))
        blocks += [(f"arms.{n}.{fam}.overrides", (a.get(fam) or {}).get("overrides")) for fam in ("dense", "moe")]
        blocks += [(f"arms.{n}.per_size.{s}", p) for s, p in (a.get("per_size") or {}).items()]
        for s in a.get("per_size") or {}:
            need_size(f"arms.{n}.per_size.{s}", s)
    for where, block in blocks:
        if block and "multipliers" in (block.get("schedule") or {}):
            raise ConfigError(f"{where}.schedule.multipliers", "set multipliers in an arm's `multipliers` table, not in a run-config block")
        if block and "meta" in block:
            raise ConfigError(f"{where}.meta", "meta is filled by the study; leave it out")

    sweeps = study.get("sweeps") or {}
    for name, sw in sweeps.items():
        for i, s in enumerate(sw.get("sizes", [])):
            need_size(f"sweeps.{name}.sizes[{i}]", s)
        for i, a in enumerate(sw.get("arms", [])):
            need_arm(f"sweeps.{name}.arms[{i}]", a)
        if "arm" in sw:
            need_arm(f"sweeps.{name}.arm", sw["arm"])
    if "lr" in sweeps:
        lr = sweeps["lr"]
        for s in lr.get("per_size", {}):
            need_size(f"sweeps.lr.per_size.{s}", s)
        if "factors" in lr and "values" in lr:
            raise ConfigError("sweeps.lr", "give exactly one of: factors, values")
        uncovered = [s for s in lr.get("sizes", sizes) if s not in lr.get("per_size", {})]
        if uncovered and "factors" not in lr and "values" not in lr:
            raise ConfigError("sweeps.lr.factors", f"no lr grid for size(s) {', '.join(uncovered)}: give factors or values (or per_size)")
    ladder_arm = sweeps.get("ladder", {}).get("arm", "baseline")
    if "ladder" in sweeps:
        need_arm("sweeps.ladder.arm", ladder_arm)
    for s in sweeps.get("usweep", {}).get("factors", {}):
        need_size(f"sweeps.usweep.factors.{s}", s)
    if "into" in sweeps.get("removal", {}):
        raise ConfigError("sweeps.removal.into", "only a contribution sweep has `into`; allowed keys: arm, sizes, components, seeds")
    if "contribution" in sweeps:
        need_arm("sweeps.contribution.into", sweeps["contribution"].get("into", "baseline"))
    from rlrs.tune import check_tune

    check_tune(study)


def load_study(path: Path) -> dict:
    """Read, validate and cross-check a study file (name defaults to the file stem)."""
    path = Path(path)
    return check_study(load_file(path, "study"), default_name=path.stem)


def executor_settings(study: dict) -> dict:
    """The study's executor block with defaults filled (local, 60 min)."""
    return _deep_merge(EXECUTOR_DEFAULTS, study.get("executor"))


# -------------------------------------------------------------- expansion


def _size_raw(study: dict, size_name: str) -> dict:
    """defaults < the size's shape < the size's overrides (no arm yet)."""
    size = study["sizes"][size_name]
    raw = copy.deepcopy(study.get("defaults") or {})
    model = {k: size[k] for k in ("d_model", "n_layers", "n_heads", "d_ff", "seq_len", "moe") if k in size}
    train = {k: size[k] for k in ("steps", "batch_size") if k in size}
    raw = _deep_merge(raw, {"model": model, "train": train})
    return _deep_merge(raw, size.get("overrides"))


def size_family(study: dict, size_name: str) -> str:
    """'moe' or 'dense': which of an arm's family blocks applies at this size."""
    return "moe" if (_size_raw(study, size_name).get("model") or {}).get("moe") else "dense"


@dataclass
class _Cell:
    """One (size, arm) point: its raw config and the resolved form."""

    raw: dict
    resolved: dict


@dataclass
class _Expander:
    study: dict
    # (family, arm) -> tuned settings (rlrs.tune): they replace the arm's own
    # settings at every size of that family.
    tuned: dict = field(default_factory=dict)
    _resolved: dict = field(default_factory=dict)  # canonical raw JSON -> resolved

    def resolve(self, raw: dict, where: str) -> dict:
        from rlrs.config import resolve

        key = json.dumps(raw, sort_keys=True)
        if key not in self._resolved:
            try:
                self._resolved[key] = resolve(raw)
            except ConfigError as e:
                message = str(e)[len(e.field) + 2 :]  # ConfigError's text is "field: message"
                raise ConfigError(f"{where}: run config field {e.field}", message) from None
        return copy.deepcopy(self._resolved[key])

    def cell(self, size_name: str, arm_name: str, seed: int) -> _Cell:
        """defaults < size < arm overrides < arm's family block < arm.per_size, then the arm's table."""
        study = self.study
        arm = study["arms"][arm_name]
        raw = _size_raw(study, size_name)
        family = "moe" if (raw.get("model") or {}).get("moe") else "dense"
        fam = arm.get(family) or {}
        raw = _deep_merge(raw, arm.get("overrides"))
        raw = _deep_merge(raw, fam.get("overrides"))
        raw = _deep_merge(raw, (arm.get("per_size") or {}).get(size_name))
        table = fam.get("multipliers", arm.get("multipliers", {}))
        raw.setdefault("schedule", {})["multipliers"] = copy.deepcopy(table)
        if (family, arm_name) in self.tuned:  # tune small, transfer large
            from rlrs.tune import apply_settings

            raw = apply_settings(raw, self.tuned[(family, arm_name)])
        raw["seed"] = seed
        return _Cell(raw, self.resolve(raw, f"sizes.{size_name} x arms.{arm_name}"))


def _table(resolved: dict) -> dict:
    """The arm's full resolved table, norm left out (it is always (1, 1))."""
    return {c: dict(m) for c, m in resolved["schedule"]["multipliers"].items() if c != "norm"}


def _with_centre(factors) -> list:
    """Factor sweeps always include factor 1 (the main run, trained once)."""
    return sorted(set(float(f) for f in factors) | {1.0})


def _without_sizes(study: dict, drop: set[str]) -> dict:
    """The study with some sizes taken out of every sweep (a sweep left with
    no size is dropped: an empty list would otherwise mean "every size")."""
    if not drop:
        return study
    study = copy.deepcopy(study)
    study["sizes"] = {n: s for n, s in study["sizes"].items() if n not in drop}
    sweeps = study.get("sweeps") or {}
    for name in list(sweeps):
        sw = sweeps[name]
        if "sizes" in sw:
            sw["sizes"] = [s for s in sw["sizes"] if s not in drop]
            if not sw["sizes"]:
                del sweeps[name]
                continue
        if name == "usweep":
            sw["factors"] = {s: f for s, f in sw["factors"].items() if s not in drop}
            if not sw["factors"]:
                del sweeps[name]
    if not study["sizes"]:
        sweeps.clear()
    return study


def expand(study: dict, tune_state=None) -> list[tuple[str, dict, dict]]:
    """Every requested run: (run_id, resolved config, labels), in sweep order.

    labels = {size, arm, sweep, tags}. A run requested by several sweeps
    appears once per request with the same id and the same config object,
    whose `meta` holds the first requester's labels.

    tune_state (rlrs.tune.TuneState, for a study with a `tune` block): the
    searches' runs come first (sweep `tune`), the tuned settings replace the
    arms' own at every size of the tuned family, and the sizes of a family
    whose search has not finished are left out until it has. Without it the
    study expands with its arms' own settings (a pure function of the file).
    """
    from rlrs.config import run_id as hash_run

    study = check_study(study, default_name=study.get("study"))
    tuned = tune_state.tuned if tune_state is not None else {}
    if tune_state is not None and tune_state.pending:
        study = _without_sizes(study, {s for s in study["sizes"] if size_family(study, s) in tune_state.pending})
    ex = _Expander(study, tuned=tuned)
    sizes, arms = list(study["sizes"]), list(study["arms"])
    seeds_default = study.get("seeds", [0])
    sweeps = study.get("sweeps") or {}
    out: list[tuple[str, dict, dict]] = []
    by_id: dict[str, dict] = {}

    def emit(raw: dict, size: str, arm: str, sweep: str, tags: dict, where: str) -> None:
        resolved = ex.resolve(raw, where)
        rid = hash_run(resolved)
        labels = {"size": size, "arm": arm, "sweep": sweep, "tags": tags}
        if rid not in by_id:
            resolved["meta"] = {"study": study["study"], **copy.deepcopy(labels)}
            by_id[rid] = resolved
        out.append((rid, by_id[rid], labels))

    def seeds_of(sw: dict) -> list[int]:
        return sw.get("seeds", seeds_default)

    # tune: every run a finished search asked for, at its tuning size
    if tune_state is not None and tune_state.runs:
        from rlrs.tune import apply_settings

        for search, _, settings, tags in tune_state.runs:
            emit(apply_settings(search.base_raw, settings), search.size, search.arm, "tune", tags, f"tune ({search.key})")

    # main: every arm at every size (or the listed ones)
    main = sweeps.get("main", {})
    for size in main.get("sizes", sizes):
        for arm in main.get("arms", arms):
            for seed in seeds_of(main):
                emit(ex.cell(size, arm, seed).raw, size, arm, "main", {}, f"sweeps.main ({size}, {arm})")

    # lr: each arm's base lr times factors, or absolute values, per size
    if "lr" in sweeps:
        sw = sweeps["lr"]
        for size in sw.get("sizes", sizes):
            grid = sw.get("per_size", {}).get(size, sw)
            for arm in sw.get("arms", arms):
                for seed in seeds_of(sw):
                    cell = ex.cell(size, arm, seed)
                    base = cell.resolved["optim"]["lr"]
                    if "factors" in grid:
                        points = [(_num(base * f), f) for f in _with_centre(grid["factors"])]
                    else:
                        points = [(_num(v), _num(v / base)) for v in grid["values"]]
                    for lr, factor in points:
                        raw = _deep_merge(cell.raw, {"optim": {"lr": lr}})
                        emit(raw, size, arm, "lr", {"lr": lr, "lr_factor": factor}, f"sweeps.lr ({size}, {arm}, lr={lr})")

    # ladder: one arm (the baseline) at several lengths, for the speedup fit
    if "ladder" in sweeps:
        sw = sweeps["ladder"]
        arm = sw.get("arm", "baseline")
        for size in sw.get("sizes", sizes):
            for seed in seeds_of(sw):
                cell = ex.cell(size, arm, seed)
                base_steps = cell.resolved["train"]["steps"]
                for f in _with_centre(sw["factors"]):
                    steps = max(2, round(base_steps * f))
                    raw = _deep_merge(cell.raw, {"train": {"steps": steps}})
                    emit(raw, size, arm, "ladder", {"length_factor": f, "steps": steps}, f"sweeps.ladder ({size}, x{f})")

    # usweep: one multiplier at a time, the others at the arm's values
    if "usweep" in sweeps:
        sw = sweeps["usweep"]
        arm = sw["arm"]
        for size, factors in sw["factors"].items():
            for seed in seeds_of(sw):
                cell = ex.cell(size, arm, seed)
                table = _table(cell.resolved)
                for comp in _components(sw, table, "sweeps.usweep.components", size):
                    for which in sw.get("which", ["start", "end"]):
                        for f in _with_centre(factors):
                            t = copy.deepcopy(table)
                            t[comp][which] = _num(t[comp][which] * f)
                            raw = _deep_merge(cell.raw, {"schedule": {"multipliers": t}})
                            tags = {"component": comp, "which": which, "factor": f}
                            emit(raw, size, arm, "usweep", tags, f"sweeps.usweep ({size}, {comp}.{which} x{f})")

    # removal: the arm with one component reset to (1, 1)
    if "removal" in sweeps:
        sw = sweeps["removal"]
        arm = sw["arm"]
        for size in sw.get("sizes", sizes):
            for seed in seeds_of(sw):
                cell = ex.cell(size, arm, seed)
                table = _table(cell.resolved)
                changed = {c: m for c, m in table.items() if (m["start"], m["end"]) != (1.0, 1.0)}
                for comp in _components(sw, changed, "sweeps.removal.components", size, all_present=table):
                    t = copy.deepcopy(table)
                    t[comp] = {"start": 1.0, "end": 1.0}
                    raw = _deep_merge(cell.raw, {"schedule": {"multipliers": t}})
                    emit(raw, size, arm, "removal", {"component": comp}, f"sweeps.removal ({size}, {comp})")

    # contribution: the `into` arm plus the source arm's values for one component
    if "contribution" in sweeps:
        sw = sweeps["contribution"]
        src, into = sw["arm"], sw.get("into", "baseline")
        for size in sw.get("sizes", sizes):
            for seed in seeds_of(sw):
                source = _table(ex.cell(size, src, seed).resolved)
                cell = ex.cell(size, into, seed)
                table = _table(cell.resolved)
                changed = {c: m for c, m in source.items() if m != table.get(c)}
                for comp in _components(sw, changed, "sweeps.contribution.components", size, all_present=table):
                    t = copy.deepcopy(table)
                    t[comp] = dict(source[comp])
                    raw = _deep_merge(cell.raw, {"schedule": {"multipliers": t}})
                    tags = {"component": comp, "source_arm": src}
                    emit(raw, size, into, "contribution", tags, f"sweeps.contribution ({size}, {comp})")
    return out


def _components(sw: dict, default: dict, where: str, size: str, all_present: dict | None = None) -> list[str]:
    """The components a sweep visits at one size: those in `default` unless
    the sweep lists its own. A listed component the size's model lacks (an
    MoE has no ffn, a dense model no router/experts) is skipped there, so one
    list can serve dense and MoE sizes; a list matching nothing is an error."""
    present = all_present if all_present is not None else default
    if "components" not in sw:
        return list(default)
    listed = sw["components"]
    unknown = [c for c in listed if c not in present]
    if len(unknown) == len(listed):
        raise ConfigError(where, f"none of {listed} has parameters at size {size!r}; components there: {', '.join(present)}")
    return [c for c in listed if c in present]


# ------------------------------------------------------------------- plan


def chunks(items: list, size: int) -> list[list]:
    """Consecutive groups of at most `size` items, in the caller's order."""
    n = max(1, int(size))
    return [items[i:i + n] for i in range(0, len(items), n)]


@dataclass
class Plan:
    """A study expanded: what `results/<study>/plan.json` holds."""

    name: str
    study_file: str | None
    study_sha256: str
    study_config: dict
    runs: list[dict]  # one per request: run_id, size, arm, sweep, tags
    configs: dict[str, dict]  # run_id -> resolved config (first requester's meta)

    @property
    def run_ids(self) -> list[str]:
        return list(self.configs)

    def batches(self, runs_per_job: int) -> dict[str, list[str]]:
        """The plan's runs in groups of at most `runs_per_job` for batched
        submission: ordered by estimated run time so that a batch holds runs
        of similar length, keyed by a digest of their ids (a changed plan
        gives new batches; runs already finished in them are skipped)."""
        def work(cfg: dict) -> int:  # a torch-free proxy of run time (run_cost imports the model)
            m, t = cfg["model"], cfg["train"]
            return t["steps"] * t["batch_size"] * m["seq_len"] * m["n_layers"] * m["d_model"] ** 2

        ids = sorted(self.configs, key=lambda rid: (-work(self.configs[rid]), rid))
        return {hashlib.sha256(",".join(g).encode()).hexdigest()[:12]: g for g in chunks(ids, runs_per_job)}

    def sweep_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for r in self.runs:
            counts[r["sweep"]] = counts.get(r["sweep"], 0) + 1
        return counts

    def to_json(self) -> dict:
        return {
            "study": self.name,
            "study_file": self.study_file,
            "study_sha256": self.study_sha256,
            "study_config": self.study_config,
            "executor": executor_settings(self.study_config),
            "runs": self.runs,
            "configs": self.configs,
        }


def make_plan(study: dict, study_file: Path | None = None, tune_state=None) -> Plan:
    """Validate and expand; the study's own dict is what the plan records.
    tune_state: see expand(); `tuned_plan()` passes the one found on disk."""
    study = check_study(study, default_name=Path(study_file).stem if study_file else None)
    requests = expand(study, tune_state)
    configs: dict[str, dict] = {}
    for rid, cfg, _ in requests:
        configs.setdefault(rid, cfg)
    if study_file is not None and Path(study_file).exists():
        digest = hashlib.sha256(Path(study_file).read_bytes()).hexdigest()
    else:
        digest = hashlib.sha256(json.dumps(study, sort_keys=True).encode()).hexdigest()
    return Plan(
        name=study["study"],
        study_file=str(study_file) if study_file is not None else None,
        study_sha256=digest,
        study_config=study,
        runs=[{"run_id": rid, **labels} for rid, _, labels in requests],
        configs=configs,
    )


def tuned_plan(study: dict, study_file: Path | None = None) -> Plan:
    """The plan as things stand: with the tuned settings of every finished
    search of the study's tune block (results/<study>/tune/), and without the
    sizes still waiting for one. The same as make_plan() for a study without
    a tune block."""
    study = check_study(study, default_name=Path(study_file).stem if study_file else None)
    if not study.get("tune"):
        return make_plan(study, study_file)
    from rlrs.tune import load_state

    return make_plan(study, study_file, tune_state=load_state(study))


def plan_digest(plan: Plan) -> str:
    """Changes whenever the plan's content would: a Snakemake params trigger."""
    body = json.dumps({"study": plan.study_config, "runs": plan.runs}, sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()[:16]


def write_plan(plan: Plan, path: Path) -> None:
    atomic.write_json(path, plan.to_json())


def read_plan(path: Path) -> dict:
    path = Path(path)
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise ConfigError(str(path), "plan file not found (snakemake writes it; or give --study STUDY.yaml)") from None


def plan_for_snakemake(config: dict, configfiles: list, default_file: Path) -> Plan:
    """The Snakefile's entry: the study is Snakemake's `config` (the last
    --configfile, or the default study when none was given)."""
    study_file = Path(configfiles[-1]) if configfiles else Path(default_file)
    return tuned_plan(dict(config), study_file=study_file)


# -------------------------------------------------------------- estimates


def run_cost(cfg: dict) -> dict:
    """Tokens, FLOPs and an estimated time for one resolved run config."""
    from rlrs.model import train_flops_per_token

    model, train, data = cfg["model"], cfg["train"], cfg["data"]
    steps = train["steps"]
    tokens = steps * train["batch_size"] * model["seq_len"]
    per_token = train_flops_per_token(model)
    # Evaluation: a forward pass (~1/3 of a training step's FLOPs per token)
    # over the fixed eval budget every eval_interval steps and at the end.
    n_evals = steps // train["eval_interval"] + (steps % train["eval_interval"] != 0)
    flops = tokens * per_token + n_evals * data["eval_tokens"] * per_token / 3
    if train["device"] == "cuda":
        seconds = RUN_START_S + flops / GPU_FLOPS
    else:
        seconds = RUN_START_S + steps * CPU_STEP_OVERHEAD_S + flops / (CPU_FLOPS_PER_THREAD * train["threads"])
    return {"tokens": tokens, "flops": flops, "seconds": seconds, "device": train["device"]}


def _fmt_s(s: float) -> str:
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


def cli_plan(study_path: Path) -> int:
    """`rlrs plan STUDY.yaml`: runs per sweep and in total, tokens, FLOPs and
    time. With a tune block: each search's run budget, then the transfer
    counted as if every search were done (sizes still waiting for a search
    are counted with the arm's untuned settings, which cost the same)."""
    try:
        study = load_study(study_path)
        budget: list[tuple[str, int, dict]] = []  # (label, runs at most, one run's cost) per pending search
        if study.get("tune"):
            from rlrs.tune import load_state, read_result, searches

            for srch in searches(study):
                if read_result(srch) is None:
                    cost = run_cost(srch.candidate(srch.start)[1])
                    budget.append((f"{srch.size} x {srch.arm} ({srch.space}, {len(srch.parameters)} parameters)",
                                   srch.run_budget(), cost))
            plan = make_plan(study, study_file=study_path, tune_state=load_state(study, assume_done=True))
        else:
            plan = make_plan(study, study_file=study_path)
    except ConfigError as e:
        print(f"error: {study_path}: {e}", file=sys.stderr)
        return 2
    counts = plan.sweep_counts()
    costs = {rid: run_cost(cfg) for rid, cfg in plan.configs.items()}
    print(f"study {plan.name} ({study_path})  executor {executor_settings(plan.study_config)['kind']}")
    if budget:
        print("tune: searches still to run (runs at most: the run budget, or 1 + passes x parameters x factors)")
        for label, n, cost in budget:
            print(f"  {label:<52}{n:>6} runs  <= {_fmt_s(n * cost['seconds'])}")
            costs.update({f"tune:{label}:{i}": cost for i in range(n)})
        print(f"  {'tune budget':<52}{sum(n for _, n, _ in budget):>6} runs (the transfer below starts after)")
        print("transfer (the study's sweeps with the tuned settings):")
    print(f"{'sweep':<14}{'requests':>10}")
    for sweep in SWEEP_ORDER:
        if sweep in counts:
            print(f"{sweep:<14}{counts[sweep]:>10}")
    print(f"{'total':<14}{len(plan.runs):>10}   unique runs (trained once each): {len(plan.configs)}")
    tokens = sum(c["tokens"] for c in costs.values())
    flops = sum(c["flops"] for c in costs.values())
    print(f"training tokens: {tokens:,}")
    print(f"estimated FLOPs: {flops:.3g}")
    for device in sorted({c["device"] for c in costs.values()}):
        secs = sum(c["seconds"] for c in costs.values() if c["device"] == device)
        if device == "cuda":
            print(f"estimated GPU time: {_fmt_s(secs)} (assumes {GPU_FLOPS:.0e} effective FLOP/s; an estimate)")
        else:
            cores = os.cpu_count() or 1
            print(
                f"estimated {device.upper()} time: {_fmt_s(secs)} of one-thread runs, "
                f"~{_fmt_s(secs / cores)} wall with `snakemake -c {cores}` "
                f"(assumes {CPU_FLOPS_PER_THREAD / 1e9:.0f} GFLOP/s per thread + "
                f"{CPU_STEP_OVERHEAD_S * 1e3:.0f} ms/step + {RUN_START_S:.0f} s/run; an estimate)"
            )
    return 0


# ----------------------------------------------------------------- status

STATES = ("done", "diverged", "failed", "running", "missing")


def run_state(run_dir: Path) -> str:
    """done | diverged | failed | running | missing, from the run directory.

    `summary.json` decides when present. Without it, `failure.json` (written by
    `rlrs submit` when a job fails; Snakemake deletes the summary of a failed
    job) means failed, and `submitted.json` (held while `rlrs submit` waits)
    or a checkpoint means running (or interrupted while running)."""
    summary = run_dir / "summary.json"
    if summary.exists():
        try:
            status = json.loads(summary.read_text()).get("status")
        except json.JSONDecodeError:
            return "failed"
        return {"completed": "done", "diverged": "diverged"}.get(status, "failed")
    if (run_dir / "failure.json").exists():
        return "failed"
    if (run_dir / "submitted.json").exists() or (run_dir / "checkpoint.pt").exists():
        return "running"
    return "missing"


def cli_status(study_path: Path) -> int:
    """`rlrs status STUDY.yaml`: one line per run and the counts per state."""
    try:
        study = load_study(study_path)
        plan = tuned_plan(study, study_file=study_path)
        waiting: list[str] = []
        if study.get("tune"):
            from rlrs.tune import load_state

            pending = load_state(study).pending
            waiting = [s for s in study["sizes"] if size_family(study, s) in pending]
    except ConfigError as e:
        print(f"error: {study_path}: {e}", file=sys.stderr)
        return 2
    runs_dir = results_dir(plan.name) / "runs"
    labels: dict[str, list[str]] = {}
    for r in plan.runs:
        labels.setdefault(r["run_id"], []).append(r["sweep"])
    counts = dict.fromkeys(STATES, 0)
    print(f"{'run_id':<14}{'state':<10}{'size':<12}{'arm':<14}{'seed':>5}  sweeps")
    for rid, cfg in plan.configs.items():
        state = run_state(runs_dir / rid)
        counts[state] += 1
        meta = cfg["meta"]
        sweeps = ",".join(dict.fromkeys(labels[rid]))
        print(f"{rid:<14}{state:<10}{meta['size']:<12}{meta['arm']:<14}{cfg['seed']:>5}  {sweeps}")
    print(f"{plan.name}: {len(plan.configs)} runs in {runs_dir}: " + ", ".join(f"{counts[s]} {s}" for s in STATES))
    if waiting:
        print(f"{plan.name}: not planned until their family's tuning search is done (`rlrs tune {study_path}`): "
              + ", ".join(waiting))
    return 0
