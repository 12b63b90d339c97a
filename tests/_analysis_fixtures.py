"""Constructed study databases with known answers, for the analysis and
report tests.

The database is created by rlrs.db (its real schema and views); the rows
are written directly, so every expected number is known in closed form. Metrics are logged every `log_every` steps
(not every step) to keep the files small; eval points follow the trainer's
rule: after step t when (t + 1) % eval_interval == 0, and at the last step.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from rlrs import db
from rlrs.schedule import lr_at

DENSE = ("embedding", "attention", "ffn", "head", "norm")
MOE = ("embedding", "attention", "router", "experts", "head", "norm")
RLRS_DENSE = {"embedding": (5.0, 0.667), "head": (1.0, 0.444), "ffn": (1.0, 0.667), "attention": (1.0, 0.2)}
FINAL_FRACTION = 0.0444


def power_law(a: float, b: float, c: float) -> Callable[[float], float]:
    """L(T) = a + b * T^-c: the shape a baseline's final loss takes over its length."""
    return lambda t: a + b * t ** (-c)


@dataclass
class StudyDB:
    """Collects runs of one study, then writes a DuckDB file."""

    study: str = "t"
    components: tuple[str, ...] = DENSE
    runs: list[dict] = field(default_factory=list)
    plan: list[tuple] = field(default_factory=list)
    metrics: list[tuple] = field(default_factory=list)
    log_every: int = 10
    config: dict | None = None  # the resolved study dict stored in `studies`

    def params(self, size: str | None) -> int:
        # Sizes named s1, s2, ... get 1e5, 4e5, 1.6e6, ... non-embedding params.
        digits = (size or "").lstrip("s")
        return int(1e5 * 4 ** (int(digits) - 1)) if digits.isdigit() else 123456

    def run(
        self,
        *,
        size: str = "s1",
        arm: str = "baseline",
        sweep: str = "main",
        seed: int = 0,
        lr: float = 1e-3,
        steps: int = 1000,
        loss: float | None = None,
        status: str = "completed",
        tags: dict | None = None,
        also: tuple = (),
        curve: Callable[[float], float] | None = None,
        multipliers: dict | None = None,
        error: str | None = None,
        eval_interval: int | None = None,
        moe: bool = False,
        columns: dict | None = None,
    ) -> str:
        """Add one run. Its final eval loss is `loss` (or curve(steps)); its
        eval curve is `curve` (steps trained -> loss) shifted to end at the
        final loss. `also`: more (sweep, tags) plan rows for the same run;
        `columns`: `runs` columns set as given (parameter counts, n_experts)."""
        tags = tags or {}
        key = json.dumps([self.study, size, arm, sweep, seed, lr, steps, tags, loss, status, moe], sort_keys=True)
        comps = MOE if moe else self.components
        rid = hashlib.sha256(key.encode()).hexdigest()[:12]
        if curve is None:
            final = 3.0 if loss is None else loss
            curve = lambda t, f=final, n=steps: f + 3.0 * (1.0 - t / n) ** 2  # noqa: E731
        final = curve(steps) if loss is None else loss
        shift = final - curve(steps)
        mult = multipliers if multipliers is not None else (RLRS_DENSE if arm == "rlrs" else {})
        mult_full = {
            c: {"start": mult.get(c, (1.0, 1.0))[0], "end": mult.get(c, (1.0, 1.0))[1]} for c in comps if c != "norm"
        }
        completed = status == "completed"
        p = self.params(size)
        row = {
            "run_id": rid,
            "study": self.study,
            "size": size,
            "arm": arm,
            "sweep": sweep,
            "tags": json.dumps(tags),
            "d_model": 64,
            "n_layers": 2,
            "moe": moe,
            "n_experts": 8 if moe else None,
            "top_k": 1 if moe else None,
            "granularity": 1 if moe else None,
            "lr": lr,
            "steps": steps,
            "seed": seed,
            "multipliers": json.dumps(mult_full),
            "params_total": p + 50000,
            "params_active": p + 50000,
            "params_nonembedding": p,
            "params_active_nonembedding": p,
            "status": status,
            "final_eval_loss": final if completed else None,
            "train_loss_last100": final + 0.05 if completed else None,
            "wall_time_s": steps / 100.0,
            "executor": "local",
            "job_id": None,
            "host": "testhost",
            "git_commit": "abc1234",
            "versions": json.dumps({"python": "3.11", "torch": "2.13.0"}),
            "config": json.dumps({"data": {"corpus": "austen", "tokenizer": "bytes"}}),
            "error": error if error is not None else (None if completed else f"{status} at step 10"),
        }
        for c in comps:
            if c != "norm":
                row[f"mult_{c}_start"], row[f"mult_{c}_end"] = mult_full[c]["start"], mult_full[c]["end"]
        self.runs.append(row | (columns or {}))
        for sw, tg in ((sweep, tags), *also):
            self.plan.append((self.study, rid, size, arm, sw, json.dumps(tg)))
        interval = eval_interval or max(1, steps // 10)
        last = steps - 1 if completed else min(steps - 1, 10)
        warm = max(1, math.ceil(0.01 * steps))
        for t in range(last + 1):
            is_eval = (t + 1) % interval == 0 or t == steps - 1
            if t % self.log_every and not is_eval:
                continue
            rec = {
                "run_id": rid,
                "step": t,
                "tokens": (t + 1) * 2048,
                "train_loss": curve(t + 1) + shift + 0.02,
                "grad_norm": 1.0,
                "eval_loss": curve(t + 1) + shift if is_eval and completed else None,
            }
            for c in comps:
                s, e = (1.0, 1.0) if c == "norm" else (mult_full[c]["start"], mult_full[c]["end"])
                rec[f"lr_{c}"] = lr_at("cosine", lr, FINAL_FRACTION, warm, steps, s, e, t)
                rec[f"update_{c}"] = rec[f"lr_{c}"] * 10.0
            self.metrics.append(rec)
        return rid

    def write(self, path: Path) -> Path:
        """Create the database with rlrs.db's own schema, then bulk-insert
        the rows (columns not given here stay NULL, as for a real run
        lacking them)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        con = db.connect(path, read_only=False)
        try:
            con.execute("BEGIN")
            plan = [dict(zip(("study", "run_id", "size", "arm", "sweep", "tags"), p)) for p in self.plan]
            studies = [
                {
                    "name": self.study,
                    "file": f"workflow/configs/{self.study}.yaml",
                    "sha256": "0" * 64,
                    "config": json.dumps(self.config or {"study": self.study}),
                    "collected_at": dt.datetime.now(dt.timezone.utc),
                }
            ]
            # Bulk inserts through Arrow (row-by-row executemany is slow in DuckDB).
            now = dt.datetime.now(dt.timezone.utc)
            runs = [r | {"ingested_at": now} for r in self.runs]
            for table, rows in (("runs", runs), ("metrics", self.metrics), ("plan", plan), ("studies", studies)):
                if rows:
                    con.register("_rows", pl.DataFrame(rows, infer_schema_length=None))
                    con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM _rows")
                    con.unregister("_rows")
            con.execute("COMMIT")
        finally:
            con.close()
        return path


def large_study(seeds: int = 5, sizes: int = 4) -> StudyDB:
    """A study of about 1,000 runs with every sweep (for size limits):
    per size and seed a 5-length baseline ladder, two RLRS arms, a 5-point
    lr sweep per arm, removal and contribution per component, and at the two
    smallest sizes a 6-factor U-sweep of every multiplier."""
    law = power_law(2.0, 5.0, 0.3)
    t = 1000
    comps = ("embedding", "attention", "ffn", "head")
    db = StudyDB(study="big", log_every=20)
    for si in range(sizes):
        size = f"s{si + 1}"
        for seed in range(seeds):
            eps = 0.002 * (seed - seeds // 2)
            for f in (0.5, 0.75, 1.0, 1.5, 2.0):
                steps = int(t * f)
                if f == 1.0:
                    db.run(
                        size=size,
                        seed=seed,
                        steps=steps,
                        loss=law(steps) + eps,
                        also=(("ladder", {"length_factor": f}), ("lr", {"lr_factor": 1.0})),
                    )
                else:
                    db.run(
                        size=size,
                        sweep="ladder",
                        seed=seed,
                        steps=steps,
                        loss=law(steps) + eps,
                        tags={"length_factor": f},
                    )
            for arm, gain in (("rlrs", 1.2), ("rlrs2", 1.1)):
                db.run(size=size, arm=arm, seed=seed, loss=law(gain * t) + eps, also=(("lr", {"lr_factor": 1.0}),))
            for arm in ("baseline", "rlrs", "rlrs2"):
                for f in (0.5, 2.0):
                    db.run(
                        size=size,
                        arm=arm,
                        sweep="lr",
                        lr=1e-3 * f,
                        seed=seed,
                        loss=2.7 + abs(f - 1) * 0.01 + eps,
                        tags={"lr": 1e-3 * f, "lr_factor": f},
                    )
            for c in comps:
                db.run(size=size, arm="rlrs", sweep="removal", seed=seed, loss=2.65 + eps, tags={"component": c})
                db.run(
                    size=size,
                    arm="baseline",
                    sweep="contribution",
                    seed=seed,
                    loss=2.66 + eps,
                    tags={"component": c, "source_arm": "rlrs"},
                )
            if si < 2:
                for c in comps:
                    for which in ("start", "end"):
                        for f in (0.125, 0.25, 0.5, 2.0, 4.0, 8.0):
                            db.run(
                                size=size,
                                arm="rlrs",
                                sweep="usweep",
                                seed=seed,
                                loss=2.6 + 0.01 * abs(f - 1) + eps,
                                tags={"component": c, "which": which, "factor": f},
                            )
    return db


# The constructed baseline: final loss L(T) = a + b*T^-c at T x LADDER around
# the main length T.
T = 1000
LADDER = (0.5, 0.75, 1.0, 1.5, 2.0)
L = power_law(2.0, 5.0, 0.3)


def add_ladder(db: StudyDB, size: str = "s1", seeds=(0,), noise=(0.0,), curve=None) -> None:
    """Baseline at T x LADDER; the main-length run is in both main and ladder
    (one run id), as rlrs.study plans it. noise[i] is added for seed i."""
    for f in LADDER:
        for seed, eps in zip(seeds, noise):
            steps = int(T * f)
            kw = dict(
                size=size,
                arm="baseline",
                seed=seed,
                steps=steps,
                loss=L(steps) + eps,
                tags={"length_factor": f, "steps": steps},
            )
            if curve is not None:
                kw["curve"] = curve
                kw.pop("loss")
            if f == 1.0:
                kw.update(sweep="main", tags={}, also=(("ladder", {"length_factor": f, "steps": steps}),))
            else:
                kw.update(sweep="ladder")
            db.run(**kw)


def add_usweep(db: StudyDB, size: str, losses: dict[float, float], comp="embedding", which="start"):
    for f, loss in losses.items():
        tags = {"component": comp, "which": which, "factor": f}
        if f == 1.0:
            db.run(size=size, arm="rlrs", sweep="main", loss=loss, also=(("usweep", tags),))
        else:
            db.run(size=size, arm="rlrs", sweep="usweep", loss=loss, tags=tags)
