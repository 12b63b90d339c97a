"""Study files -> resolved run configs: expansion, run ids, dedupe, errors,
plan.json, status, and the submitit executors (rlrs.study, rlrs.launch).
Fast: no training here (tests/test_workflow.py runs the real thing)."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rlrs.errors import ConfigError
from rlrs.rundir import run_state
from rlrs.study import (
    check_study,
    expand,
    load_plan,
    load_study,
    make_plan,
    write_plan,
)

from _cli_fixtures import cli_plan, cli_status, cli_submit

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "workflow" / "configs"

DENSE_TABLE = {
    "embedding": {"start": 5.0, "end": 0.667},
    "head": {"start": 1.0, "end": 0.444},
    "ffn": {"start": 1.0, "end": 0.667},
    "attention": {"start": 1.0, "end": 0.2},
}


def small_study() -> dict:
    """Two dense sizes, baseline + RLRS, every kind of sweep."""
    return {
        "study": "unit",
        "defaults": {
            "model": {"seq_len": 32},
            "optim": {"lr": 0.004},
            "data": {"eval_tokens": 1024},
            "train": {"steps": 40, "batch_size": 4, "eval_interval": 10},
        },
        "sizes": {
            "s": {"d_model": 16, "n_layers": 1, "n_heads": 2},
            "m": {"d_model": 32, "n_layers": 2, "n_heads": 2, "steps": 60},
        },
        "arms": {"baseline": {}, "rlrs": {"multipliers": copy.deepcopy(DENSE_TABLE)}},
        "seeds": [0, 1],
        "sweeps": {
            "lr": {"sizes": ["s"], "factors": [0.5, 2.0], "seeds": [0]},
            "ladder": {"factors": [0.5, 1.5], "seeds": [0]},
            "usweep": {"arm": "rlrs", "factors": {"s": [0.5, 2.0]}, "components": ["embedding", "head"], "seeds": [0]},
            "removal": {"arm": "rlrs", "sizes": ["s"], "seeds": [0]},
            "contribution": {"arm": "rlrs", "sizes": ["s"], "seeds": [0]},
        },
    }


def _by_sweep(requests):
    out: dict[str, list] = {}
    for rid, cfg, labels in requests:
        out.setdefault(labels["sweep"], []).append((rid, cfg, labels))
    return out


# ----------------------------------------------------------------- expansion


def test_expansion_counts_and_values():
    requests = expand(check_study(small_study()))
    sweeps = _by_sweep(requests)
    # main: 2 sizes x 2 arms x 2 seeds
    assert len(sweeps["main"]) == 8
    # lr: size s x 2 arms x {0.5, 1 (centre), 2} x seed 0
    assert len(sweeps["lr"]) == 6
    assert sorted(l["tags"]["lr"] for _, _, l in sweeps["lr"] if l["arm"] == "rlrs") == [0.002, 0.004, 0.008]
    # ladder: 2 sizes x {0.5, 1, 1.5}; size m runs 60 steps -> 30, 60, 90
    assert len(sweeps["ladder"]) == 6
    assert sorted(c["train"]["steps"] for _, c, l in sweeps["ladder"] if l["size"] == "m") == [30, 60, 90]
    assert all(l["arm"] == "baseline" for _, _, l in sweeps["ladder"])
    # usweep: 2 components x {start, end} x {0.5, 1, 2}
    assert len(sweeps["usweep"]) == 12
    emb_start = sorted(
        c["schedule"]["multipliers"]["embedding"]["start"]
        for _, c, l in sweeps["usweep"]
        if l["tags"]["component"] == "embedding" and l["tags"]["which"] == "start"
    )
    assert emb_start == [2.5, 5.0, 10.0]
    # removal: the 4 components RLRS changes, each reset to (1, 1)
    assert sorted(l["tags"]["component"] for _, _, l in sweeps["removal"]) == ["attention", "embedding", "ffn", "head"]
    for _, cfg, labels in sweeps["removal"]:
        comp = labels["tags"]["component"]
        assert cfg["schedule"]["multipliers"][comp] == {"start": 1.0, "end": 1.0}
    # contribution: baseline plus one RLRS component
    assert len(sweeps["contribution"]) == 4
    for _, cfg, labels in sweeps["contribution"]:
        comp = labels["tags"]["component"]
        table = cfg["schedule"]["multipliers"]
        assert table[comp] == DENSE_TABLE[comp]
        assert all(m == {"start": 1.0, "end": 1.0} for c, m in table.items() if c != comp)
    assert len(requests) == 8 + 6 + 6 + 12 + 4 + 4


def test_batches_partition_the_plan_into_runs_of_similar_length():
    plan = make_plan(check_study(small_study()))
    work = {
        rid: c["train"]["steps"] * c["model"]["n_layers"] * c["model"]["d_model"] ** 2
        for rid, c in plan.configs.items()
    }
    batches = plan.batches(4)
    members = [rid for ids in batches.values() for rid in ids]
    assert sorted(members) == sorted(plan.run_ids)  # every run in exactly one batch
    assert all(1 <= len(ids) <= 4 for ids in batches.values())
    assert len(batches) == -(-len(plan.run_ids) // 4)
    groups = list(batches.values())  # longest first, and no batch mixes across another's range
    for a, b in zip(groups, groups[1:]):
        assert min(work[r] for r in a) >= max(work[r] for r in b)
    assert plan.batches(4) == batches  # ids are a pure function of the plan
    assert list(plan.batches(1).values()) == [[rid] for rid in sorted(plan.run_ids, key=lambda r: (-work[r], r))]


def test_duplicate_requests_share_one_run_and_keep_every_label():
    study = check_study(small_study())
    plan = make_plan(study)
    # The centre points (lr x1, ladder x1, usweep x1) are the main runs; the
    # RLRS run with embedding reset equals ... nothing else; so
    # unique = 40 requests - 2 (lr centres) - 2 (ladder centres) - 4 (usweep centres)
    assert len(plan.runs) == 40
    assert len(plan.configs) == 32
    main_rlrs_s = next(
        r["run_id"]
        for r in plan.runs
        if r["sweep"] == "main" and r["arm"] == "rlrs" and r["size"] == "s" and plan.configs[r["run_id"]]["seed"] == 0
    )
    sweeps_of = sorted(r["sweep"] for r in plan.runs if r["run_id"] == main_rlrs_s)
    assert sweeps_of == ["lr", "main", "usweep", "usweep", "usweep", "usweep"]
    # The stored config carries the first requester's labels.
    assert plan.configs[main_rlrs_s]["meta"] == {
        "study": "unit",
        "size": "s",
        "arm": "rlrs",
        "sweep": "main",
        "tags": {},
    }


def test_same_run_requested_twice_is_trained_once():
    study = small_study()
    study["sweeps"] = {
        "main": {"sizes": ["s"], "arms": ["baseline"], "seeds": [0]},
        "ladder": {"sizes": ["s"], "factors": [1.0], "seeds": [0]},
    }
    plan = make_plan(check_study(study))
    assert [(r["sweep"], r["tags"]) for r in plan.runs] == [
        ("main", {}),
        ("ladder", {"length_factor": 1.0, "steps": 40}),
    ]
    assert len({r["run_id"] for r in plan.runs}) == 1 and len(plan.configs) == 1


def test_layering_defaults_size_arm_per_size():
    study = small_study()
    study["sizes"]["m"]["overrides"] = {"optim": {"weight_decay": 0.05}}
    study["arms"]["rlrs"]["overrides"] = {"optim": {"lr": 0.002}}
    study["arms"]["rlrs"]["per_size"] = {"m": {"optim": {"lr": 0.001}}}
    study["sweeps"] = {}
    cfgs = {(l["size"], l["arm"], c["seed"]): c for _, c, l in expand(check_study(study))}
    assert cfgs[("s", "baseline", 0)]["optim"]["lr"] == 0.004  # defaults
    assert cfgs[("s", "rlrs", 0)]["optim"]["lr"] == 0.002  # arm override
    assert cfgs[("m", "rlrs", 0)]["optim"]["lr"] == 0.001  # arm per size
    assert cfgs[("m", "rlrs", 0)]["optim"]["weight_decay"] == 0.05  # size override
    assert cfgs[("m", "rlrs", 0)]["train"]["steps"] == 60  # size steps
    assert cfgs[("s", "rlrs", 0)]["schedule"]["warmup_steps"] == 1  # ceil(0.01 * 40)


def test_family_tables_pick_dense_or_moe():
    study = small_study()
    study["sizes"]["e"] = {"d_model": 16, "n_layers": 1, "n_heads": 2, "moe": {"n_experts": 4, "top_k": 1}}
    study["arms"]["rlrs"] = {
        "dense": {"multipliers": {"ffn": {"start": 2.0, "end": 1.0}}},
        "moe": {"multipliers": {"experts": {"start": 0.3, "end": 1.125}, "router": {"start": 0.666, "end": 1.0}}},
    }
    study["sweeps"] = {}
    cfgs = {(l["size"], l["arm"]): c for _, c, l in expand(check_study(study)) if c["seed"] == 0}
    assert cfgs[("s", "rlrs")]["schedule"]["multipliers"]["ffn"] == {"start": 2.0, "end": 1.0}
    moe = cfgs[("e", "rlrs")]["schedule"]["multipliers"]
    assert moe["experts"] == {"start": 0.3, "end": 1.125} and "ffn" not in moe
    assert moe["router"] == {"start": 0.666, "end": 1.0}


def test_run_ids_stable_across_key_order():
    study = small_study()

    def reverse(d):
        return {k: reverse(v) for k, v in reversed(list(d.items()))} if isinstance(d, dict) else d

    # Key order does not change a run id (sweep order changes request order only).
    a = sorted(r["run_id"] for r in make_plan(check_study(study)).runs)
    b = sorted(r["run_id"] for r in make_plan(check_study(reverse(study))).runs)
    assert a == b


def test_run_ids_stable_across_processes(tmp_path):
    path = tmp_path / "unit.yaml"
    path.write_text(yaml.safe_dump(small_study()))
    code = (
        "import json,sys; from rlrs.study import load_study, make_plan; "
        "p = make_plan(load_study(sys.argv[1]), sys.argv[1]); print(json.dumps(p.run_ids))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "123"}
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True, env=env)
    assert json.loads(out.stdout) == make_plan(load_study(path), path).run_ids


# -------------------------------------------------------------------- errors


def _bad(mutate) -> dict:
    study = small_study()
    mutate(study)
    return study


BAD_STUDIES = {
    "unknown executor": (
        lambda s: s.update(executor={"kind": "cluster"}),
        ["executor.kind", "'cluster'", "local, slurm, debug"],
    ),
    "unknown component": (
        lambda s: s["arms"]["rlrs"]["multipliers"].update(expert={"start": 1, "end": 2}),
        ["arms.rlrs.multipliers.expert", "embedding, attention, ffn, router, experts, head"],
    ),
    "norm multiplier": (
        lambda s: s["arms"]["rlrs"]["multipliers"].update(norm={"start": 2, "end": 1}),
        ["arms.rlrs.multipliers.norm", "allowed: embedding"],
    ),
    "missing sizes": (lambda s: s.pop("sizes"), ["sizes: required key is missing"]),
    "wrong type": (lambda s: s["sizes"]["s"].update(d_model="wide"), ["sizes.s.d_model", "'wide'", "integer"]),
    "unknown key": (lambda s: s.update(sweep={}), ["sweep: unknown key", "sweeps"]),
    "sweep size": (
        lambda s: s["sweeps"]["lr"].update(sizes=["xl"]),
        ["sweeps.lr.sizes[0]", "'xl'", "sizes of this study: m, s"],
    ),
    "usweep size": (
        lambda s: s["sweeps"]["usweep"]["factors"].update(xl=[2.0]),
        ["sweeps.usweep.factors.xl", "sizes of this study: m, s"],
    ),
    "ladder arm": (lambda s: s["sweeps"]["ladder"].update(arm="base"), ["sweeps.ladder.arm", "baseline, rlrs"]),
    "lr both": (lambda s: s["sweeps"]["lr"].update(values=[0.1]), ["sweeps.lr", "factors, values"]),
    "run config": (
        lambda s: s["sizes"]["m"].update(n_heads=3),
        ["sizes.m x arms.baseline", "model.n_heads", "must divide d_model=32"],
    ),
    "run config field": (
        lambda s: s["defaults"]["train"].update(device="tpu"),
        ["train.device", "'tpu'", "cpu, cuda, auto"],
    ),
    "unknown health setting": (
        lambda s: s.update(health={"min_tokens": 5}),
        ["health.min_tokens: unknown key; allowed keys here: active_params_match, end_drop, max_dropped_frac"],
    ),
    "negative health setting": (lambda s: s.update(health={"noise_z": -1}), ["health.noise_z", "-1"]),
    "multipliers in defaults": (
        lambda s: s["defaults"].update(schedule={"multipliers": {}}),
        ["defaults.schedule.multipliers", "arm"],
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_STUDIES))
def test_bad_study_names_field_and_allowed_values(case, tmp_path, monkeypatch, capsys):
    mutate, needles = BAD_STUDIES[case]
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(_bad(mutate)))
    with pytest.raises(ConfigError) as err:
        make_plan(load_study(path), path)
    for needle in needles:
        assert needle in str(err.value), (needle, str(err.value))
    # The CLI says the same, exits 2 and creates nothing.
    monkeypatch.chdir(tmp_path)
    assert cli_plan(path) == 2
    assert str(err.value) in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]


def test_the_schemas_health_block_names_exactly_the_health_settings():
    from rlrs.analysis.health import SETTINGS

    schema = yaml.safe_load((Path(__file__).resolve().parent.parent / "workflow/schemas/study.schema.yaml").read_text())
    block = schema["$defs"]["health"]["properties"]
    assert list(block) == [s.name for s in SETTINGS]
    for s in SETTINGS:
        assert block[s.name]["description"].startswith(f"default {s.default:g}; ")
    study = small_study() | {"health": {"noise_z": 3, "warn_seeds": 4}}
    assert check_study(study)["health"] == {"noise_z": 3, "warn_seeds": 4}


def test_study_name_defaults_to_file_stem(tmp_path):
    study = small_study()
    del study["study"]
    path = tmp_path / "my-study.yaml"
    path.write_text(yaml.safe_dump(study))
    assert load_study(path)["study"] == "my-study"
    assert make_plan(load_study(path), path).name == "my-study"


@pytest.mark.parametrize("name", ["demo", "smoke", "study-cpu-v1", "study-gpu"])
def test_shipped_studies_validate(name):
    path = CONFIGS / f"{name}.yaml"
    plan = make_plan(load_study(path), path)
    assert plan.name == name and plan.configs
    kinds = {c["model"]["moe"] is None for c in plan.configs.values()}
    if name != "smoke":
        assert kinds == {True, False}, "dense AND MoE"


def test_study_gpu_is_paper_scale():
    plan = make_plan(load_study(CONFIGS / "study-gpu.yaml"), CONFIGS / "study-gpu.yaml")
    assert plan.study_config["executor"]["kind"] == "slurm"
    shapes = {(c["model"]["d_model"], c["model"]["n_layers"]) for c in plan.configs.values()}
    assert shapes == {(512, 8), (768, 12), (1536, 24)}
    for c in plan.configs.values():
        assert c["train"]["device"] == "cuda" and c["train"]["precision"] == "bf16"
        # One run on 8 GPUs, data-parallel, micro-batches of 8 sequences (the MoE dispatch group).
        assert (c["train"]["parallel"], c["train"]["micro_batch_size"]) == ("ddp", 8)
        if c["model"]["moe"]:
            assert (c["model"]["moe"]["n_experts"], c["model"]["moe"]["top_k"]) == (8, 1)


def test_plan_reports_gpu_hours_of_multi_gpu_runs(capsys):
    from rlrs.study import estimate as E

    path = CONFIGS / "study-gpu.yaml"
    assert cli_plan(path) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("estimated GPU time"))
    secs = E.estimate(load_study(path), path).seconds("cuda")
    assert line.startswith(f"estimated GPU time: {secs / 3600:,.1f} GPU-hours, 8 GPU(s) per run ")
    assert f"~{secs / 8 / 3600:.1f} h wall" in line


def test_study_cpu_transfers_to_8x_and_27x():
    from rlrs.model import param_counts

    plan = make_plan(load_study(CONFIGS / "study-cpu-v1.yaml"), CONFIGS / "study-cpu-v1.yaml")
    by_size = {c["meta"]["size"]: c for c in plan.configs.values() if c["meta"]["sweep"] == "main"}
    for fam in ("dense", "moe"):
        n = {s: param_counts(by_size[f"{fam}-{s}"]["model"])["params_nonembedding"] for s in "sml"}
        assert 7 < n["m"] / n["s"] < 9 and n["l"] / n["s"] >= 26
    assert {c["seed"] for c in plan.configs.values()} == {0, 1, 2}


# ---------------------------------------------------------- plan and status


def test_plan_json_is_atomic_and_matches_the_db_contract(tmp_path):
    from jsonschema import validate

    from rlrs.study.plan import PLAN_SCHEMA

    plan = make_plan(check_study(small_study()))
    path = tmp_path / "results" / "unit" / "plan.json"
    write_plan(plan, path)
    doc = load_plan(path)
    validate(doc, PLAN_SCHEMA)
    assert set(doc) >= {"study", "study_file", "study_sha256", "study_config", "runs"}
    assert all(set(r) == {"run_id", "size", "arm", "sweep", "tags"} for r in doc["runs"])
    assert doc["executor"] == {"kind": "local", "timeout_min": 60, "runs_per_job": 1, "tasks_per_node": 1, "nodes": 1}
    assert sorted(doc["configs"]) == sorted(plan.run_ids)
    assert [p.name for p in path.parent.iterdir()] == ["plan.json"]  # no temp file left


def test_plan_cli_prints_counts_and_estimates(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("RLRS_RESULTS", str(tmp_path))  # nothing selected yet
    assert cli_plan(CONFIGS / "smoke.yaml") == 0
    out = capsys.readouterr().out
    # stage 1: 2 cells x 3 grid points x 1 selection seed, + 1 point each beyond an edge at most
    assert "  tiny.baseline                                3 runs + up to   1 beyond the grid" in out
    assert "  selection                                    6 runs + up to   2 beyond the grid" in out
    assert "not yet known: the lrs (hence the run ids) at tiny wait for stage 1" in out
    # stage 2: 2 arms x 3 reported seeds, and the x0.5 ladder on the same seeds
    assert "main                   6" in out and "ladder                 6" in out
    assert "total                 12   unique runs (trained once each): 9" in out
    # (8 selection runs + 6 main runs) x 30 steps + 3 x 15 steps, batch 8 x seq 32
    assert f"training tokens: {(14 * 30 + 3 * 15) * 8 * 32:,}" in out
    assert "an estimate" in out


def test_status_reports_each_state(tmp_path, monkeypatch, capsys):
    study = small_study()
    study["sweeps"] = {"main": {"sizes": ["s"], "seeds": [0, 1]}}  # 4 runs
    path = tmp_path / "st.yaml"
    path.write_text(yaml.safe_dump(study))
    monkeypatch.setenv("RLRS_RESULTS", str(tmp_path / "res"))
    ids = make_plan(load_study(path), path).run_ids
    runs = tmp_path / "res" / "unit" / "runs"
    for rid, status in zip(ids, ["completed", "diverged", "failed"]):
        (runs / rid).mkdir(parents=True)
        (runs / rid / "summary.json").write_text(json.dumps({"status": status}))
    (runs / ids[3]).mkdir()
    assert [run_state(runs / r) for r in ids] == ["done", "diverged", "failed", "missing"]
    (runs / ids[3] / "submitted.json").write_text("{}")
    assert run_state(runs / ids[3]) == "running"
    assert cli_status(path) == 0
    out = capsys.readouterr().out
    assert "4 runs" in out and "1 done, 1 diverged, 1 failed, 1 running, 0 missing" in out
    (runs / ids[3] / "submitted.json").unlink()
    (runs / ids[3] / "failure.json").write_text("{}")
    assert run_state(runs / ids[3]) == "failed"


# ------------------------------------------------------------------ launch


def test_executors_are_explicit_with_time_limits(tmp_path):
    import submitit

    from rlrs.executor import slurm_parameters
    from rlrs.launch import make_executor

    local = make_executor("local", tmp_path / "l", {"timeout_min": 7})
    assert type(local) is submitit.LocalExecutor and local.parameters["timeout_min"] == 7
    debug = make_executor("debug", tmp_path / "d", {"timeout_min": 3})
    assert type(debug) is submitit.DebugExecutor
    settings = {
        "timeout_min": 90,
        "slurm": {"partition": "gpu", "mem_gb": 64, "gpus_per_node": 1, "array_parallelism": 8},
    }
    assert slurm_parameters(settings) == {
        "time": 90,
        "ntasks_per_node": 1,
        "nodes": 1,
        "partition": "gpu",
        "mem": "64GB",
        "gpus_per_node": 1,
        "array_parallelism": 8,
    }
    # A data-parallel job: one task per GPU, across nodes.
    multi = slurm_parameters({**settings, "tasks_per_node": 4, "nodes": 2, "slurm": {"gpus_per_node": 4}})
    assert multi == {"time": 90, "ntasks_per_node": 4, "nodes": 2, "gpus_per_node": 4}
    two = make_executor("local", tmp_path / "l2", {"timeout_min": 7, "tasks_per_node": 2})
    assert two.parameters["tasks_per_node"] == 2
    if shutil.which("srun"):  # submitit refuses a SlurmExecutor without srun (tests/test_slurm.py runs a real one)
        slurm = make_executor("slurm", tmp_path / "s", settings)
        assert type(slurm) is submitit.SlurmExecutor and slurm.parameters["time"] == 90
    with pytest.raises(ConfigError, match="executor.kind: 'auto' is not an executor; allowed: local, slurm, debug"):
        make_executor("auto", tmp_path / "a", {"timeout_min": 1})


def test_train_job_checkpoint_resubmits_itself():
    import pickle

    from submitit.helpers import DelayedSubmission

    from rlrs.launch import TrainJob

    job = TrainJob()
    again = pickle.loads(pickle.dumps(job))  # submitit pickles it into the job folder
    assert type(again) is TrainJob
    runs = [({"seed": 0}, "/runs/x"), ({"seed": 1}, "/runs/y")]
    sub = job.checkpoint(runs, "slurm")
    assert isinstance(sub, DelayedSubmission)
    assert sub.function is job and sub.args == (runs, "slurm")


def test_submit_refuses_unplanned_run_dir(tmp_path, capsys):
    plan = make_plan(check_study(small_study()))
    write_plan(plan, tmp_path / "unit" / "plan.json")
    bad = tmp_path / "unit" / "runs" / "0123456789ab"
    assert cli_submit([bad]) == 2
    assert "0123456789ab are not in the plan" in capsys.readouterr().err
    assert not bad.exists()


def test_submit_parent_does_not_import_torch(tmp_path):
    code = "import sys, rlrs.cli, rlrs.launch, rlrs.study; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
