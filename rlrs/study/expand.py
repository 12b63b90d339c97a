"""A study expanded: the resolved run configs it asks for.

A study names model sizes, schedule arms and the sweeps of the RLRS protocol
(spec sections 4-6). `expand()` turns it into one request per (sweep point,
seed): `(run_id, resolved_config, labels)`. Two requests with the same
resolved config have the same run id and are trained once; every label set
still goes to the plan, so the analysis finds a run under every sweep that
asked for it. The tags of each sweep are built by rlrs.tags (the one
contract with the analysis).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field

from rlrs import tags
from rlrs.config import resolve, run_id
from rlrs.errors import ConfigError
from rlrs.executor import check_world, executor_settings, world_size
from rlrs.study import lr_rules
from rlrs.study.validate import (
    check_study,
    deep_merge,
    is_staged,
    ladder_seeds,
    per_size_lr_fields,
    size_family,
    size_raw,
)
from rlrs.tunables import apply_settings


def _num(x: float) -> float:
    """Round a product like 0.003 * 1.5 to 12 significant digits, so the same
    point reached by two sweeps hashes to the same run id."""
    return float(f"{x:.12g}")


@dataclass
class _Cell:
    """One (size, arm) point: its raw config and the resolved form."""

    raw: dict
    resolved: dict


@dataclass
class Expander:
    study: dict
    # (family, arm) -> tuned settings (rlrs.study.searches): they replace the arm's own
    # settings at every size of that family.
    tuned: dict = field(default_factory=dict)
    # (size, arm) -> the lr stage 1 chose (rlrs.study.selection): a staged study's
    # every sweep runs there.
    chosen: dict = field(default_factory=dict)
    # The whole study file, where this expansion leaves sizes out (a staged or tuned study
    # waiting for some): the arms' configs, and so the lr rule's base sizes, come from it.
    full: dict | None = None
    _resolved: dict = field(default_factory=dict)  # canonical raw JSON -> resolved
    _shapes: dict = field(default_factory=dict)  # arm -> size -> lr_rules.Shape (the mup rule's)

    def resolve(self, raw: dict, where: str) -> dict:
        key = json.dumps(raw, sort_keys=True)
        if key not in self._resolved:
            try:
                self._resolved[key] = resolve(raw)
                # The study's job shape (executor.tasks_per_node x nodes) must fit every run.
                check_world(self._resolved[key], world_size(executor_settings(self.study)))
            except ConfigError as e:
                message = str(e)[len(e.field) + 2 :]  # ConfigError's text is "field: message"
                raise ConfigError(f"{where}: run config field {e.field}", message) from None
        return copy.deepcopy(self._resolved[key])

    def arm_raw(self, size_name: str, arm_name: str) -> dict:
        """defaults < size < arm overrides < arm's family block < arm.per_size, then the arm's
        table and the tuned settings: the study's own lr, seed unset."""
        study = self.full or self.study
        arm = study["arms"][arm_name]
        raw = size_raw(study, size_name)
        family = "moe" if (raw.get("model") or {}).get("moe") else "dense"
        fam = arm.get(family) or {}
        raw = deep_merge(raw, arm.get("overrides"))
        raw = deep_merge(raw, fam.get("overrides"))
        raw = deep_merge(raw, (arm.get("per_size") or {}).get(size_name))
        table = fam.get("multipliers", arm.get("multipliers", {}))
        raw.setdefault("schedule", {})["multipliers"] = copy.deepcopy(table)
        if (family, arm_name) in self.tuned:  # tune small, transfer large
            raw = apply_settings(raw, self.tuned[(family, arm_name)])
        return raw

    def cell(self, size_name: str, arm_name: str, seed: int) -> _Cell:
        """The arm's run config at a size: at stage 1's chosen lr where there is one, else at the
        study's lr rule's (rlrs.study.lr_rules)."""
        raw = self.arm_raw(size_name, arm_name)
        lr = self.chosen.get((size_name, arm_name))
        if lr is None:
            lr = self.rule_lr(size_name, arm_name, raw)
        if lr is not None:
            raw = deep_merge(raw, {"optim": {"lr": lr}})
        raw["seed"] = seed
        return _Cell(raw, self.resolve(raw, f"sizes.{size_name} x arms.{arm_name}"))

    def rule_lr(self, size_name: str, arm_name: str, raw: dict) -> float | None:
        """The lr rule's base lr for the run config `raw` of (size, arm); None under
        `study` (raw's own lr is the rule's)."""
        rule = lr_rules.rule_of(self.study)
        if rule == "study":
            return None
        where = f"lr_rule {rule} at sizes.{size_name} x arms.{arm_name}"
        if rule == "joint_moe":
            return _num(lr_rules.joint_moe_lr(*lr_rules.joint_moe_inputs(self.resolve(raw, where))))
        if arm_name not in self._shapes:
            self._shapes[arm_name] = {
                s: _shape(self.resolve(self.arm_raw(s, arm_name), f"sizes.{s} x arms.{arm_name}"))
                for s in (self.full or self.study)["sizes"]
            }
        base = lr_rules.base_size(size_name, self._shapes[arm_name])
        if base != size_name:
            fields = per_size_lr_fields(self.full or self.study, size_name, arm_name)
            if fields:
                raise ConfigError(
                    fields[0],
                    f"lr_rule mup runs {size_name!r} at the lr of its base size {base!r}, so this lr would be "
                    f"ignored; allowed: set it at {base!r}, or lr_rule: study",
                )
        return float(self.resolve(self.arm_raw(base, arm_name), where)["optim"]["lr"])


def _shape(resolved: dict) -> lr_rules.Shape:
    model = resolved["model"]
    return lr_rules.Shape(
        "moe" if model["moe"] else "dense",
        model.get("parametrization", "sp"),
        model["d_model"],
        model["n_layers"],
        model.get("base_d_model"),
    )


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


def expand(study: dict, tune_state=None, select_state=None) -> list[tuple[str, dict, dict]]:
    """Every requested run: (run_id, resolved config, labels), in sweep order.

    labels = {size, arm, sweep, tags}. A run requested by several sweeps
    appears once per request with the same id and the same config object,
    whose `meta` holds the first requester's labels.

    tune_state (rlrs.study.searches.TuneState, for a study with a `tune` block): the
    searches' runs come first (sweep `tune`), the tuned settings replace the
    arms' own at every size of the tuned family, and the sizes of a family
    whose search has not finished are left out until it has. Without it the
    study expands with its arms' own settings (a pure function of the file).

    select_state (rlrs.study.selection.SelectState, for a staged study): the
    selection runs come first after the searches' (sweep `lr`, stage
    select), every other sweep runs at each (size, arm)'s chosen lr, the
    sizes whose selection has not finished are left out until it has, and
    those where a cell's selection failed (no lr trained) are left out.
    """
    study = check_study(study, default_name=study.get("study"))
    tuned = tune_state.tuned if tune_state is not None else {}
    drop = set()
    if tune_state is not None and tune_state.pending:
        drop |= {s for s in study["sizes"] if size_family(study, s) in tune_state.pending}
    staged = is_staged(study)
    if select_state is not None:
        drop |= select_state.pending | select_state.failed_sizes
    if staged and "ladder" in (study.get("sweeps") or {}):
        study["sweeps"]["ladder"]["seeds"] = ladder_seeds(study)
    full = study
    study = _without_sizes(study, drop)
    ex = Expander(study, tuned=tuned, chosen=select_state.chosen if select_state is not None else {}, full=full)
    sizes, arms = list(study["sizes"]), list(study["arms"])
    seeds_default = study.get("seeds", [0])
    sweeps = study.get("sweeps") or {}
    out: list[tuple[str, dict, dict]] = []
    by_id: dict[str, dict] = {}

    def emit(raw: dict, size: str, arm: str, sweep: str, run_tags: dict, where: str) -> None:
        resolved = ex.resolve(raw, where)
        rid = run_id(resolved)
        labels = {"size": size, "arm": arm, "sweep": sweep, "tags": run_tags}
        if rid not in by_id:
            resolved["meta"] = {"study": study["study"], **copy.deepcopy(labels)}
            by_id[rid] = resolved
        out.append((rid, by_id[rid], labels))

    def seeds_of(sw: dict) -> list[int]:
        return sw.get("seeds", seeds_default)

    # tune: every run a finished search asked for, at its tuning size
    if tune_state is not None and tune_state.runs:
        for search, _, settings, run_tags in tune_state.runs:
            emit(
                apply_settings(search.base_raw, settings),
                search.size,
                search.arm,
                tags.TUNE,
                run_tags,
                f"tune ({search.key})",
            )

    # lr selection (stage 1 of a staged study): every run a finished selection asked for
    if select_state is not None:
        for cell, lr, seed in select_state.runs:
            emit(
                deep_merge(cell.base_raw, {"optim": {"lr": lr}, "seed": seed}),
                cell.size,
                cell.arm,
                tags.LR,
                tags.select(lr, cell.lr_factor(lr)),
                f"select ({cell.key}, lr={lr})",
            )

    # main: every arm at every size (or the listed ones)
    main = sweeps.get("main", {})
    for size in main.get("sizes", sizes):
        for arm in main.get("arms", arms):
            for seed in seeds_of(main):
                emit(ex.cell(size, arm, seed).raw, size, arm, tags.MAIN, {}, f"sweeps.main ({size}, {arm})")

    # lr: each arm's base lr times factors, or absolute values, per size (a
    # staged study's lr sweep is its stage 1: the selection runs above)
    if "lr" in sweeps and not staged:
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
                        raw = deep_merge(cell.raw, {"optim": {"lr": lr}})
                        emit(raw, size, arm, tags.LR, tags.lr(lr, factor), f"sweeps.lr ({size}, {arm}, lr={lr})")

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
                    raw = deep_merge(cell.raw, {"train": {"steps": steps}})
                    emit(raw, size, arm, tags.LADDER, tags.ladder(f, steps), f"sweeps.ladder ({size}, x{f})")

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
                            raw = deep_merge(cell.raw, {"schedule": {"multipliers": t}})
                            emit(
                                raw,
                                size,
                                arm,
                                tags.USWEEP,
                                tags.usweep(comp, which, f),
                                f"sweeps.usweep ({size}, {comp}.{which} x{f})",
                            )

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
                    raw = deep_merge(cell.raw, {"schedule": {"multipliers": t}})
                    emit(raw, size, arm, tags.REMOVAL, tags.removal(comp), f"sweeps.removal ({size}, {comp})")

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
                    raw = deep_merge(cell.raw, {"schedule": {"multipliers": t}})
                    emit(
                        raw,
                        size,
                        into,
                        tags.CONTRIBUTION,
                        tags.contribution(comp, src),
                        f"sweeps.contribution ({size}, {comp})",
                    )

    # scaling: per arm, sizes x token budgets (x experts or granularities), for the scaling-law fits
    if "scaling" in sweeps:
        for size, arm, seed, raw, run_tags, where in scaling_points(ex, sweeps["scaling"], sizes, arms, seeds_default):
            emit(raw, size, arm, tags.SCALING, run_tags, where)
    return out


def scaling_lr(ex: Expander, cell: _Cell, size: str, arm: str, shape: dict) -> dict:
    """The base lr of a scaling run (shape: its model.moe changes, {} for none).
    A staged study's scaling runs take the lr its selection stage chose for
    (size, arm) where there is one; any other runs at the study's lr rule:
    under `study` the arm's lr at that size (per_size / overrides / tuned
    settings, as every other sweep), under `joint_moe` the rule's lr for the
    run's own model (each number of experts its own). Returns a partial run
    config."""
    if (size, arm) in ex.chosen:
        return {"optim": {"lr": ex.chosen[(size, arm)]}}
    if shape and lr_rules.rule_of(ex.study) == "joint_moe":
        return {"optim": {"lr": ex.rule_lr(size, arm, deep_merge(cell.raw, {"model": {"moe": shape}}))}}
    return {"optim": {"lr": cell.resolved["optim"]["lr"]}}


def scaling_points(ex: Expander, sw: dict, sizes: list, arms: list, seeds_default: list):
    """(size, arm, seed, raw config, tags, where) of every scaling run: each
    listed size x its token budgets (`steps`, or `tokens` rounded up to whole
    steps of batch_size x seq_len; `per_size` replaces them at a size) x, at
    MoE sizes, the listed numbers of experts and granularities."""
    for size in sw.get("sizes", sizes):
        budget = sw.get("per_size", {}).get(size, sw)
        for arm in sw.get("arms", arms):
            for seed in sw.get("seeds", seeds_default):
                cell = ex.cell(size, arm, seed)
                model = cell.resolved["model"]
                per_step = cell.resolved["train"]["batch_size"] * model["seq_len"]
                if "steps" in budget:
                    steps = list(budget["steps"])
                else:
                    steps = [max(1, -(-int(t) // per_step)) for t in budget["tokens"]]
                shapes = [{}]
                if model["moe"] is not None:
                    shapes = [
                        {"n_experts": e, "granularity": g}
                        for e in sw.get("experts", [model["moe"]["n_experts"]])
                        for g in sw.get("granularities", [model["moe"]["granularity"]])
                    ]
                for shape in shapes:
                    for n_steps in sorted(set(steps)):
                        over = deep_merge(scaling_lr(ex, cell, size, arm, shape), {"train": {"steps": n_steps}})
                        if shape:
                            over = deep_merge(over, {"model": {"moe": shape}})
                        label = ", ".join(f"{k}={v}" for k, v in {"steps": n_steps, **shape}.items())
                        yield (
                            size,
                            arm,
                            seed,
                            deep_merge(cell.raw, over),
                            tags.scaling(n_steps * per_step),
                            f"sweeps.scaling ({size}, {arm}, {label})",
                        )


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
        raise ConfigError(
            where, f"none of {listed} has parameters at size {size!r}; components there: {', '.join(present)}"
        )
    return [c for c in listed if c in present]
