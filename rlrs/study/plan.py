"""plan.json: a study expanded, written by the workflow and read by
`rlrs submit` and `rlrs collect` (one schema, one reader).

`results/<study>/plan.json` holds `study`, `study_file`, `study_sha256`,
`study_config`, `executor`, `runs` (one entry per requested (run, labels):
`run_id`, `size`, `arm`, `sweep`, `tags`) and `configs` (run id -> resolved
config).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match

from rlrs import atomic, tags
from rlrs.errors import ConfigError
from rlrs.executor import executor_settings
from rlrs.study import selection
from rlrs.study.expand import expand
from rlrs.study.searches import load_state
from rlrs.study.validate import check_study, is_staged

# JSON Schema of results/<study>/plan.json (written by write_plan).
PLAN_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["study", "runs"],
    "properties": {
        "study": {"type": "string", "minLength": 1},
        "study_file": {"type": ["string", "null"]},
        "study_sha256": {"type": ["string", "null"]},
        "study_config": {"type": ["object", "null"]},
        "runs": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["run_id"],
                "properties": {
                    "run_id": {"type": "string", "minLength": 1},
                    "size": {"type": ["string", "null"]},
                    "arm": {"type": ["string", "null"]},
                    "sweep": {"type": ["string", "null"]},
                    "tags": {"type": ["object", "null"]},
                },
            },
        },
    },
}


def chunks(items: list, size: int) -> list[list]:
    """Consecutive groups of at most `size` items, in the caller's order."""
    n = max(1, int(size))
    return [items[i : i + n] for i in range(0, len(items), n)]


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

    @property
    def workflow_run_ids(self) -> list[str]:
        """The runs the workflow's train rules train: all but a staged study's
        stage-1 runs, which `rlrs select` (the select checkpoint) trains."""
        stage1 = {r["run_id"] for r in self.runs if (r.get("tags") or {}).get("stage") == tags.SELECT}
        return [rid for rid in self.configs if rid not in stage1]

    def batches(self, runs_per_job: int) -> dict[str, list[str]]:
        """The plan's runs in groups of at most `runs_per_job` for batched
        submission: ordered by estimated run time so that a batch holds runs
        of similar length, keyed by a digest of their ids (a changed plan
        gives new batches; runs already finished in them are skipped)."""

        def work(cfg: dict) -> int:  # a torch-free proxy of run time (run_cost imports the model)
            m, t = cfg["model"], cfg["train"]
            return t["steps"] * t["batch_size"] * m["seq_len"] * m["n_layers"] * m["d_model"] ** 2

        ids = sorted(self.workflow_run_ids, key=lambda rid: (-work(self.configs[rid]), rid))
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


def make_plan(study: dict, study_file: Path | None = None, tune_state=None, select_state=None) -> Plan:
    """Validate and expand; the study's own dict is what the plan records.
    tune_state, select_state: see expand(); `tuned_plan()` passes the ones found on disk."""
    study = check_study(study, default_name=Path(study_file).stem if study_file else None)
    requests = expand(study, tune_state, select_state)
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
    search of the study's tune block (results/<study>/tune/), at the lrs
    every finished selection chose (a staged study, results/<study>/select/),
    and without the sizes still waiting for either. The same as make_plan()
    for a study without a tune block or stages."""
    study = check_study(study, default_name=Path(study_file).stem if study_file else None)
    tune_state = load_state(study) if study.get("tune") else None
    select_state = selection.load_state(study, tune_state) if is_staged(study) else None
    return make_plan(study, study_file, tune_state=tune_state, select_state=select_state)


def plan_digest(plan: Plan) -> str:
    """Changes whenever the plan's content would: a Snakemake params trigger."""
    body = json.dumps({"study": plan.study_config, "runs": plan.runs}, sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()[:16]


def write_plan(plan: Plan, path: Path) -> None:
    atomic.write_json(path, plan.to_json())


def load_plan(plan: Path | str | Mapping) -> dict:
    """Read and validate plan.json (or an already loaded dict); a missing,
    unreadable or malformed plan raises ConfigError naming the file and field."""
    where = str(plan) if isinstance(plan, (str, Path)) else "plan"
    if isinstance(plan, (str, Path)):
        try:
            doc = json.loads(Path(plan).read_text())
        except FileNotFoundError:
            raise ConfigError(where, "no plan file here (snakemake writes it; or give --study STUDY.yaml)") from None
        except json.JSONDecodeError as e:
            raise ConfigError(where, f"not valid JSON: {e}") from None
    else:
        doc = dict(plan)
    error = best_match(Draft202012Validator(PLAN_SCHEMA).iter_errors(doc))
    if error is not None:
        field = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path).lstrip(".")
        raise ConfigError(where, f"field {field or '<top level>'}: {error.message}")
    seen: dict[tuple, int] = {}
    for i, r in enumerate(doc["runs"]):
        labels = json.dumps(r.get("tags") or {}, sort_keys=True)
        key = (r["run_id"], r.get("size"), r.get("arm"), r.get("sweep"), labels)
        if key in seen:
            raise ConfigError(where, f"field runs[{i}]: the same entry as runs[{seen[key]}] ({r['run_id']})")
        seen[key] = i
    return doc


def plan_for_snakemake(config: dict, configfiles: list, default_file: Path) -> Plan:
    """The Snakefile's entry: the study is Snakemake's `config` (the last
    --configfile, or the default study when none was given)."""
    study_file = Path(configfiles[-1]) if configfiles else Path(default_file)
    return tuned_plan(dict(config), study_file=study_file)
