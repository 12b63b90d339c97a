"""A study file, checked: the JSON Schema, then relations between fields.

Checks happen in this order, all before anything is written: the JSON Schema
(`workflow/schemas/study.schema.yaml`, the same file Snakemake's `validate()`
reads), then relations between fields (a sweep naming a size or arm that does
not exist, the tune block), then (in rlrs.study.expand) `rlrs.config.resolve()`
on every expanded run config.
"""

from __future__ import annotations

import copy
from functools import lru_cache
from pathlib import Path

import yaml

from rlrs import tunables
from rlrs.config import PARAMETRIZATION_FIELDS, load_file
from rlrs.errors import ConfigError, check_schema
from rlrs.paths import STUDY_SCHEMA


def deep_merge(base: dict, over: dict | None) -> dict:
    """`over` onto a copy of `base`: mappings merge, anything else replaces."""
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


@lru_cache(maxsize=1)
def _schema() -> dict:
    with open(STUDY_SCHEMA) as f:
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
            raise ConfigError(
                f"{where}.schedule.multipliers",
                "set multipliers in an arm's `multipliers` table, not in a run-config block",
            )
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
            raise ConfigError(
                "sweeps.lr.factors",
                f"no lr grid for size(s) {', '.join(uncovered)}: give factors or values (or per_size)",
            )
    ladder_arm = sweeps.get("ladder", {}).get("arm", "baseline")
    if "ladder" in sweeps:
        need_arm("sweeps.ladder.arm", ladder_arm)
    for s in sweeps.get("usweep", {}).get("factors", {}):
        need_size(f"sweeps.usweep.factors.{s}", s)
    if "into" in sweeps.get("removal", {}):
        raise ConfigError(
            "sweeps.removal.into", "only a contribution sweep has `into`; allowed keys: arm, sizes, components, seeds"
        )
    if "contribution" in sweeps:
        need_arm("sweeps.contribution.into", sweeps["contribution"].get("into", "baseline"))
    check_tune(study)
    check_stages(study)
    check_scaling(study)
    check_lr_rule(study)
    for i, name in enumerate(study.get("reuse_runs_from", [])):
        if name == study["study"]:
            raise ConfigError(
                f"reuse_runs_from[{i}]", f"{name!r} is this study itself; allowed: the names of other studies"
            )


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
            raise ConfigError(
                f"tune.sizes[{i}]",
                f"{s!r} is a second {fam} size (after {families[fam]!r}); "
                "tune at one size per model family (dense, moe)",
            )
        families[fam] = s
    for a in tune["arms"]:
        if a not in arms:
            raise ConfigError(f"tune.arms.{a}", f"unknown arm {a!r}; arms of this study: {', '.join(arms)}")
    for i, p in enumerate(tune.get("parameters", [])):
        if p not in tunables.PARAMETERS:
            raise ConfigError(
                f"tune.parameters[{i}]", f"unknown parameter {p!r}; allowed: {', '.join(tunables.PARAMETERS)}"
            )


# ------------------------------------------------------------ staged studies
# A study with `selection_seeds` is staged (docs/design.md, Stages): stage 1
# chooses each (size, arm)'s lr on the selection seeds (rlrs.study.selection),
# stage 2 measures at the chosen lrs on the reported `seeds`.

STAGE_DEFAULTS = {"min_reported_seeds": 5, "min_ladder_seeds": 3, "max_extra_points": 2}


def is_staged(study: dict) -> bool:
    return "selection_seeds" in study


def ladder_seeds(study: dict) -> list[int]:
    """A staged study's ladder seeds: sweeps.ladder.seeds, else the first 3 reported seeds."""
    ladder = (study.get("sweeps") or {}).get("ladder") or {}
    return list(ladder.get("seeds", study["seeds"][: STAGE_DEFAULTS["min_ladder_seeds"]]))


def _seed_list(seeds) -> str:
    return "[" + ", ".join(map(str, seeds)) + "]"


def check_stages(study: dict) -> None:
    """Cross-field checks of a staged study: the reported seeds are disjoint
    from the selection and tuning seeds and numerous enough for an interval;
    the ladder and the ablations run on reported seeds; the lr grid is
    centred (factors); a tune block gives every arm the same run budget."""
    if not is_staged(study):
        return
    sel = study["selection_seeds"]
    if "seeds" not in study:
        raise ConfigError("seeds", "a staged study (it has selection_seeds) must list its reported seeds")
    seeds = study["seeds"]
    overlap = sorted(set(seeds) & set(sel))
    if overlap:
        raise ConfigError(
            "seeds",
            f"the reported seeds {_seed_list(seeds)} overlap the selection seeds {_seed_list(sel)} "
            f"(both hold {_seed_list(overlap)}): a seed that chose the lr must not report the result",
        )
    tune = study.get("tune")
    if tune and tune.get("seed", 0) in seeds:
        raise ConfigError(
            "seeds",
            f"the reported seeds {_seed_list(seeds)} overlap the tuning seeds [{tune.get('seed', 0)}] "
            "(tune.seed): a seed that tuned the settings must not report the result",
        )
    least = study.get("min_reported_seeds", STAGE_DEFAULTS["min_reported_seeds"])
    if len(seeds) < least:
        raise ConfigError(
            "seeds",
            f"{len(seeds)} reported seed(s) {_seed_list(seeds)}; a staged study needs >= {least} "
            "(min_reported_seeds, default 5, at least 3: no interval below 3 seeds)",
        )
    sweeps = study.get("sweeps") or {}
    lr = sweeps.get("lr")
    if lr is None:
        raise ConfigError("sweeps.lr", "a staged study chooses its lrs on an lr grid: give sweeps.lr.factors")
    if "values" in lr or any("values" in g for g in (lr.get("per_size") or {}).values()):
        raise ConfigError("sweeps.lr.values", "a staged study's grid is centred on each arm's lr: give factors")
    if "seeds" in lr:
        raise ConfigError("sweeps.lr.seeds", "a staged study selects on selection_seeds; leave sweeps.lr.seeds out")
    if "ladder" in sweeps:
        lseeds = ladder_seeds(study)
        outside = [s for s in lseeds if s not in seeds]
        if outside:
            raise ConfigError(
                "sweeps.ladder.seeds",
                f"{_seed_list(outside)} not among the reported seeds {_seed_list(seeds)}; the ladder runs on reported seeds",
            )
        if len(lseeds) < STAGE_DEFAULTS["min_ladder_seeds"]:
            raise ConfigError("sweeps.ladder.seeds", f"{len(lseeds)} seed(s); the ladder needs >= 3 per length")
    for name in ("main", "usweep", "removal", "contribution"):
        outside = [s for s in (sweeps.get(name) or {}).get("seeds", []) if s not in seeds]
        if outside:
            raise ConfigError(
                f"sweeps.{name}.seeds",
                f"{_seed_list(outside)} not among the reported seeds {_seed_list(seeds)}: "
                "each run is compared with the reference run of its own seed",
            )
    if tune and "max_runs" not in tune:
        raise ConfigError(
            "tune.max_runs",
            "a staged study's searches need one run budget for every arm (e.g. max_runs: 40): a search "
            "that stops at max_passes may stop one arm unconverged and let another converge",
        )


def check_scaling(study: dict) -> None:
    """Cross-field checks of the scaling sweep (the schema checked the types)."""
    sw = (study.get("sweeps") or {}).get("scaling")
    if sw is None:
        return
    sizes = sw.get("sizes", list(study["sizes"]))
    for s in sw.get("per_size", {}):
        if s not in study["sizes"]:
            raise ConfigError(
                f"sweeps.scaling.per_size.{s}", f"unknown size {s!r}; sizes of this study: {', '.join(study['sizes'])}"
            )
    for where, block in [("sweeps.scaling", sw)] + [
        (f"sweeps.scaling.per_size.{s}", b) for s, b in sw.get("per_size", {}).items()
    ]:
        if "steps" in block and "tokens" in block:
            raise ConfigError(where, "give exactly one of: steps, tokens")
    uncovered = [s for s in sizes if s not in sw.get("per_size", {})]
    if uncovered and "steps" not in sw and "tokens" not in sw:
        raise ConfigError(
            "sweeps.scaling.steps",
            f"no token budgets for size(s) {', '.join(uncovered)}: give steps or tokens (or per_size)",
        )
    moe = [s for s in sizes if size_family(study, s) == "moe"]
    for key in ("experts", "granularities"):
        if key in sw and not moe:
            raise ConfigError(f"sweeps.scaling.{key}", "applies to MoE sizes only, and the sweep has none")


def per_size_lr_fields(study: dict, size: str, arm: str | None = None) -> list[str]:
    """The fields that set an lr at one size (of one arm, or of any)."""
    out = []
    if "lr" in (((study["sizes"][size].get("overrides") or {}).get("optim")) or {}):
        out.append(f"sizes.{size}.overrides.optim.lr")
    for a, spec in study["arms"].items():
        if arm in (None, a) and "lr" in ((((spec.get("per_size") or {}).get(size) or {}).get("optim")) or {}):
            out.append(f"arms.{a}.per_size.{size}.optim.lr")
    return out


def check_lr_rule(study: dict) -> None:
    """Cross-field checks of lr_rule (rlrs.study.lr_rules; the mup rule's
    base sizes are found, and its per-size lrs checked, at expansion)."""
    rule = study.get("lr_rule", "study")
    if rule == "study":
        return
    lr = (study.get("sweeps") or {}).get("lr") or {}
    if "values" in lr or any("values" in g for g in (lr.get("per_size") or {}).values()):
        raise ConfigError(
            "sweeps.lr.values",
            f"lr_rule {rule} centres the lr grid on the rule's lr at each size; allowed: factors, or lr_rule: study",
        )
    if rule != "joint_moe":
        return
    for size in study["sizes"]:
        fields = per_size_lr_fields(study, size)
        if fields:
            raise ConfigError(
                fields[0],
                "lr_rule joint_moe sets every size's lr by its formula, so this lr would be ignored; "
                "allowed: leave it out, or lr_rule: study",
            )
    tune = study.get("tune")
    if tune and "lr" in tune.get("parameters", ["lr"]):
        raise ConfigError(
            "tune.parameters",
            "lr_rule joint_moe sets every size's lr by its formula, so a tuned lr would be ignored; allowed: "
            "list the parameters to tune without lr, or lr_rule: study",
        )


def load_study(path: Path) -> dict:
    """Read, validate and cross-check a study file (name defaults to the file stem)."""
    path = Path(path)
    return check_study(load_file(path, "study"), default_name=path.stem)


# The run-config model.* fields a size may set directly (the study schema's `size`).
SIZE_MODEL_FIELDS = ("d_model", "n_layers", "n_heads", "d_ff", "seq_len", "moe", *PARAMETRIZATION_FIELDS)


def size_raw(study: dict, size_name: str) -> dict:
    """defaults < the size's shape < the size's overrides (no arm yet)."""
    size = study["sizes"][size_name]
    raw = copy.deepcopy(study.get("defaults") or {})
    model = {k: size[k] for k in SIZE_MODEL_FIELDS if k in size}
    train = {k: size[k] for k in ("steps", "batch_size") if k in size}
    raw = deep_merge(raw, {"model": model, "train": train})
    return deep_merge(raw, size.get("overrides"))


def size_family(study: dict, size_name: str) -> str:
    """'moe' or 'dense': which of an arm's family blocks applies at this size."""
    return "moe" if (size_raw(study, size_name).get("model") or {}).get("moe") else "dense"
