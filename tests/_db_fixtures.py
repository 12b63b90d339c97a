"""Run directories in the exact format of docs/design.md, with constructed
values, for the database tests (no training needed).

Every value is a deterministic function of the arguments, so a test can
assert exact numbers: train_loss at step t is `loss_at(t, offset)`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from rlrs.schedule import lr_at

RLRS_MOE = {
    "embedding": {"start": 5.0, "end": 0.666},
    "attention": {"start": 1.0, "end": 1.0},
    "router": {"start": 0.666, "end": 1.0},
    "experts": {"start": 0.3, "end": 1.125},
    "head": {"start": 0.666, "end": 0.444},
    "norm": {"start": 1.0, "end": 1.0},
}
DENSE_COMPONENTS = ("embedding", "attention", "ffn", "head", "norm")
MOE_COMPONENTS = ("embedding", "attention", "router", "experts", "head", "norm")


def loss_at(step: int, offset: float = 0.0) -> float:
    """The constructed training loss curve."""
    return 2.0 + offset + 3.5 * math.exp(-step / 50)


def make_config(
    run_id: str,
    steps: int,
    *,
    moe: bool = False,
    lr: float = 3e-3,
    seed: int = 0,
    meta: dict | None = None,
    eval_interval: int = 50,
) -> dict:
    """A resolved run config (docs/design.md) plus its run_id."""
    comps = MOE_COMPONENTS if moe else DENSE_COMPONENTS
    # the MoE runs are the rlrs arm (the paper's MoE table), the dense ones the baseline
    mults = {c: dict(RLRS_MOE[c]) if moe else {"start": 1.0, "end": 1.0} for c in comps}
    return {
        "run_id": run_id,
        "meta": {
            "study": "demo",
            "size": "s1",
            "arm": "rlrs" if moe else "baseline",
            "sweep": "main",
            "tags": {},
            **(meta or {}),
        },
        "seed": seed,
        "model": {
            "vocab_size": 256,
            "seq_len": 128,
            "d_model": 64,
            "n_layers": 2,
            "n_heads": 4,
            "d_ff": 256,
            "init_scale": 0.15,
            "moe": {
                "n_experts": 8,
                "top_k": 1,
                "granularity": 1,
                "capacity_factor": 1.0,
                "load_balance_weight": 0.01,
                "z_loss_weight": 0.001,
            }
            if moe
            else None,
        },
        "optim": {"lr": lr, "weight_decay": 0.1, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "grad_clip": 1.0},
        "schedule": {
            "shape": "cosine",
            "warmup_steps": max(1, math.ceil(0.01 * steps)),
            "final_lr_fraction": 0.0444,
            "decay_fraction": 0.2,
            "multipliers": mults,
        },
        "data": {
            "corpus": "austen",
            "tokenizer": "bytes",
            "bpe_vocab_size": 4096,
            "val_fraction": 0.05,
            "eval_tokens": 65536,
        },
        "train": {
            "steps": steps,
            "batch_size": 16,
            "eval_interval": eval_interval,
            "checkpoint_interval": 50,
            "log_interval": 10,
            "device": "cpu",
            "precision": "fp32",
            "threads": 1,
            "keep_checkpoint": False,
        },
    }


def metrics_table(config: dict, steps_done: int, offset: float = 0.0) -> pa.Table:
    """metrics.parquet columns for the first `steps_done` steps of `config`."""
    steps = config["train"]["steps"]
    tokens_per_step = config["train"]["batch_size"] * config["model"]["seq_len"]
    every = config["train"]["eval_interval"]
    sched = config["schedule"]
    moe = config["model"]["moe"] is not None
    t = range(steps_done)
    cols = {
        "step": pa.array(list(t), pa.int64()),
        "tokens": pa.array([(s + 1) * tokens_per_step for s in t], pa.int64()),
        "train_loss": [loss_at(s, offset) for s in t],
        "lb_loss": [0.01 * (1 + 1 / (s + 1)) for s in t] if moe else pa.nulls(steps_done, pa.float64()),
        "z_loss": [0.001 for _ in t] if moe else pa.nulls(steps_done, pa.float64()),
        "dropped_frac": [0.05 for _ in t] if moe else pa.nulls(steps_done, pa.float64()),
        "grad_norm": [1.0 + 1 / (s + 1) for s in t],
        "eval_loss": [loss_at(s, offset) + 0.1 if ((s + 1) % every == 0 or s == steps - 1) else None for s in t],
    }
    for comp, m in sched["multipliers"].items():
        cols[f"lr_{comp}"] = [
            lr_at(
                sched["shape"],
                config["optim"]["lr"],
                sched["final_lr_fraction"],
                sched["warmup_steps"],
                steps,
                m["start"],
                m["end"],
                s,
            )
            for s in t
        ]
        cols[f"update_{comp}"] = [1e-3 * m["start"] / (s + 1) for s in t]
    return pa.table(cols)


def make_run_dir(
    path: Path,
    run_id: str,
    steps: int = 100,
    status: str = "completed",
    *,
    steps_done: int | None = None,
    moe: bool = False,
    lr: float = 3e-3,
    seed: int = 0,
    meta: dict | None = None,
    offset: float = 0.0,
    write_metrics: bool = True,
    write_summary: bool = True,
) -> Path:
    """Write RUN_DIR/{config.json, metrics.parquet, summary.json}.

    A completed run trains `steps` steps; diverged and failed ones stop at
    `steps_done` (default: half way) with a null final loss and an error."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config = make_config(run_id, steps, moe=moe, lr=lr, seed=seed, meta=meta)
    done = steps if status == "completed" else (steps // 2 if steps_done is None else steps_done)
    (path / "config.json").write_text(json.dumps(config, indent=2))
    if write_metrics:
        pq.write_table(metrics_table(config, done, offset), path / "metrics.parquet")
    last = [loss_at(s, offset) for s in range(max(0, done - 100), done)]
    summary = {
        "run_id": run_id,
        "status": status,
        "final_eval_loss": loss_at(steps - 1, offset) + 0.1 if status == "completed" else None,
        "final_eval_bpb": (loss_at(steps - 1, offset) + 0.1) / math.log(2) if status == "completed" else None,
        "train_loss_last100": sum(last) / len(last) if last else None,
        "steps_done": done,
        "tokens": done * 16 * 128,
        "params_total": 200_000 if moe else 120_000,
        "params_active": 110_000 if moe else 120_000,
        "params_nonembedding": 160_000 if moe else 80_000,
        "params_active_nonembedding": 70_000 if moe else 80_000,
        "params_by_component": {"embedding": 24_576, "attention": 32_768},
        "wall_time_s": 12.5,
        "step_time_s": 0.125,
        "started_at": "2026-11-24T01:00:00+00:00",
        "finished_at": "2026-11-24T01:00:12.500000+00:00",
        "host": "testhost",
        "job_id": None,
        "executor": "debug",
        "versions": {"python": "3.11", "torch": "2.13.0", "rlrs": "0.1.0", "numpy": "2.0"},
        "git_commit": "0123456789abcdef",
        "corpus": "austen",
        "error": None if status == "completed" else f"{status} at step {done}",
    }
    if write_summary:
        (path / "summary.json").write_text(json.dumps(summary, indent=2))
    return path


def clone_run_dir(src: Path, dst: Path, run_id: str, meta: dict | None = None) -> Path:
    """A copy of run directory `src` under another run id (metrics.parquet holds
    no run id, so it is copied byte for byte): a fast way to build many runs."""
    import shutil

    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    if (Path(src) / "metrics.parquet").exists():
        shutil.copyfile(Path(src) / "metrics.parquet", dst / "metrics.parquet")
    for name in ("config.json", "summary.json"):
        doc = json.loads((Path(src) / name).read_text())
        doc["run_id"] = run_id
        if name == "config.json" and meta:
            doc["meta"] = {**doc["meta"], **meta}
        (dst / name).write_text(json.dumps(doc, indent=2))
    return dst


def corrupt_data_page(parquet: Path, column: str) -> None:
    """Overwrite the header of `column`'s first data page: the footer still
    reads fine (so the schema check passes) but reading the data fails."""
    meta = pq.ParquetFile(parquet).metadata.row_group(0)
    chunk = next(meta.column(i) for i in range(meta.num_columns) if meta.column(i).path_in_schema == column)
    data = bytearray(Path(parquet).read_bytes())
    data[chunk.data_page_offset : chunk.data_page_offset + 40] = b"\xff" * 40
    Path(parquet).write_bytes(bytes(data))


def write_plan(path: Path, study: str, runs: list[dict]) -> Path:
    """results/<study>/plan.json as the workflow writes it."""
    doc = {
        "study": study,
        "study_file": f"workflow/configs/{study}.yaml",
        "study_sha256": "ab" * 32,
        "study_config": {"name": study, "sizes": {"s1": {"d_model": 64}}},
        "runs": runs,
    }
    Path(path).write_text(json.dumps(doc, indent=2))
    return Path(path)
