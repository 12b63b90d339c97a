"""bf16 loss parity on CPU: the same run configs trained in fp32 and in bf16
autocast (`train.precision: bf16`), several seeds each, final eval loss
compared; and the bf16 / fp32 step time, measured side by side.

Procedure (what "bf16 passes parity at a size" means; fixed before the runs):
1. Train every case (`CASES`: the smallest and the largest size of the CPU
   study, dense and MoE) for `--steps` steps with seeds 0..S-1 (S >= 5), once
   in fp32 and once in bf16 autocast, all else equal: real runs through
   `rlrs.train.train` on the byte-level Austen corpus, one torch thread, one
   run at a time. Each finished run is appended to `--results` (JSON lines),
   so an interrupted sweep resumes where it stopped.
2. Per case compare the S fp32 and S bf16 final eval losses (nats/token)
   with Welch's t-test (`scipy.stats.ttest_ind(..., equal_var=False)`).
3. Verdict: bf16 passes at a case when Welch's test finds no difference
   (two-sided p >= 0.05) AND |mean(bf16) - mean(fp32)| < 2 SE, SE the Welch
   standard error of the difference of means, i.e. the bf16 mean lies
   within the fp32 seed noise. Reported beside it, for what an equivalence
   claim would need: TOST (two one-sided Welch tests, alpha 0.05) with the
   margin = the fp32 seeds' standard deviation, and the 90% Welch confidence
   interval of the difference. With 5 seeds a side TOST at a one-sd margin
   cannot pass even for identical distributions (its critical region needs
   |diff| < sd - 1.86 * 0.63 sd < 0): it is shown, not used. Also shown: the
   paired differences (same seed, so same init and batches), which isolate
   the numerics from the seed.

`--timing-only` measures the step-time ratio alone (interleaved, best of
rounds, in one process: rlrs Trainer.train_step, fp32 vs bf16 on the same
config). Prints ONE JSON object on its last line.

    python -m bench.bf16_parity --results bench/bf16_parity.jsonl          # full sweep
    python -m bench.bf16_parity --results FILE --analyse-only                # verdict from FILE
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

from bench.common import emit, interleaved_best, log, machine

STUDY = Path(__file__).resolve().parent.parent / "workflow" / "configs" / "study-cpu.yaml"
CASES = {  # the CPU study's smallest and largest size per family
    "dense-d32": "dense-s",
    "moe-d32": "moe-s",
    "dense-d64": "dense-l",
    "moe-d64": "moe-l",
}
PRECISIONS = ("fp32", "bf16")


def run_config(case: str, precision: str, seed: int, steps: int) -> dict:
    """The CPU study's run config at one size (its `defaults` and `sizes`
    entry, read from workflow/configs/study-cpu.yaml: seq 128, batch 16,
    bytes, Austen, its optimizer and schedule, MoE capacity 1.25); one
    evaluation, at the end."""
    import yaml

    study = yaml.safe_load(STUDY.read_text())
    d = study["defaults"]
    return {
        "seed": seed,
        "model": {**d["model"], **study["sizes"][CASES[case]]},
        "optim": dict(d["optim"]),
        "schedule": dict(d["schedule"]),
        "data": dict(d["data"]),
        "train": {
            **d["train"],
            "steps": steps,
            "eval_interval": steps,
            "checkpoint_interval": steps,
            "threads": 1,
            "precision": precision,
        },
    }


def done(results: Path) -> list[dict]:
    if not results.exists():
        return []
    return [json.loads(line) for line in results.read_text().splitlines() if line.strip()]


def sweep(cases: list[str], seeds: int, steps: int, results: Path) -> None:
    """Train every (case, seed, precision) not yet in `results`, one at a time."""
    from rlrs.train import train

    have = {(r["case"], r["seed"], r["precision"], r["steps"]) for r in done(results)}
    for seed in range(seeds):  # seeds outermost: an early stop still leaves every case some seeds
        for case in cases:
            for precision in PRECISIONS:
                if (case, seed, precision, steps) in have:
                    continue
                t0 = time.perf_counter()
                with tempfile.TemporaryDirectory() as out:
                    s = train(run_config(case, precision, seed, steps), Path(out))
                row = {
                    "case": case,
                    "seed": seed,
                    "precision": precision,
                    "steps": steps,
                    "status": s["status"],
                    "final_eval_loss": s["final_eval_loss"],
                    "step_time_s": s["step_time_s"],
                    "wall_s": round(time.perf_counter() - t0, 2),
                    "load_1min": machine()["load_1min"],
                }
                log(row)
                with open(results, "a") as f:
                    f.write(json.dumps(row) + "\n")


def compare(fp32: list[float], bf16: list[float]) -> dict:
    """Welch's t-test, the 2-SE criterion, TOST at a one-sd margin, 90% CI."""
    import numpy as np
    from scipy import stats

    a, b = np.asarray(fp32), np.asarray(bf16)
    diff = b.mean() - a.mean()
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))  # Welch-Satterthwaite
    welch = stats.ttest_ind(b, a, equal_var=False)
    margin = float(a.std(ddof=1))
    lower = stats.ttest_ind(b + margin, a, equal_var=False, alternative="greater").pvalue
    upper = stats.ttest_ind(b - margin, a, equal_var=False, alternative="less").pvalue
    t90 = stats.t.ppf(0.95, df)
    paired = b - a if len(a) == len(b) else None
    return {
        "n": [len(a), len(b)],
        "fp32_mean": float(a.mean()),
        "fp32_std": margin,
        "bf16_mean": float(b.mean()),
        "bf16_std": float(b.std(ddof=1)),
        "mean_diff": float(diff),
        "se_diff": se,
        "welch_df": float(df),
        "welch_t": float(welch.statistic),
        "welch_p": float(welch.pvalue),
        "within_2se": bool(abs(diff) < 2 * se),
        "ci90_diff": [float(diff - t90 * se), float(diff + t90 * se)],
        "tost_margin": margin,
        "tost_p": float(max(lower, upper)),
        "paired_diff_mean": float(paired.mean()) if paired is not None else None,
        "paired_diff_std": float(paired.std(ddof=1)) if paired is not None else None,
        "paired_t": float(stats.ttest_rel(b, a).statistic) if paired is not None else None,
        "paired_p": float(stats.ttest_rel(b, a).pvalue) if paired is not None else None,
        "parity": bool(welch.pvalue >= 0.05 and abs(diff) < 2 * se),
    }


def analyse(rows: list[dict], steps: int) -> dict:
    out = {}
    for case in CASES:
        by = {
            p: sorted(
                (
                    r
                    for r in rows
                    if r["case"] == case and r["precision"] == p and r["steps"] == steps and r["status"] == "completed"
                ),
                key=lambda r: r["seed"],
            )
            for p in PRECISIONS
        }
        seeds = sorted({r["seed"] for r in by["fp32"]} & {r["seed"] for r in by["bf16"]})
        if len(seeds) < 2:
            continue
        loss = {p: [r["final_eval_loss"] for r in by[p] if r["seed"] in seeds] for p in PRECISIONS}
        step = {p: sum(r["step_time_s"] for r in by[p] if r["seed"] in seeds) / len(seeds) for p in PRECISIONS}
        out[case] = {
            **compare(loss["fp32"], loss["bf16"]),
            "seeds": seeds,
            "fp32_losses": loss["fp32"],
            "bf16_losses": loss["bf16"],
            "sweep_step_ratio_bf16_fp32": round(step["bf16"] / step["fp32"], 3),
        }
    return out


def timing(cases: list[str], steps: int, rounds: int) -> dict:
    """bf16 / fp32 train_step time per case, interleaved in one process."""
    from rlrs.train import Trainer

    out = {}
    for case in cases:
        with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
            from rlrs.config import resolve

            trainers = {
                p: Trainer(resolve(run_config(case, p, 0, 100000)), Path(d), executor=None, job_id=None)
                for p, d in zip(PRECISIONS, (a, b))
            }

            def stepper(tr):
                it = iter(range(10**9))
                return lambda: tr.train_step(next(it))

            best = interleaved_best({p: stepper(tr) for p, tr in trainers.items()}, rounds, steps)
        out[case] = {
            "fp32_step_ms": round(best["fp32"].wall * 1e3, 3),
            "bf16_step_ms": round(best["bf16"].wall * 1e3, 3),
            "step_ratio_bf16_fp32": round(best["bf16"].wall / best["fp32"].wall, 3),
            "step_ratio_bf16_fp32_cpu": round(best["bf16"].cpu / best["fp32"].cpu, 3),
        }
        log(case, out[case])
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--steps", type=int, default=2000, help="training steps per run")
    p.add_argument("--results", type=Path, default=None, help="JSON-lines file of finished runs (appended; resumable)")
    p.add_argument("--analyse-only", action="store_true", help="no training: the verdict from --results")
    p.add_argument("--timing-only", action="store_true", help="only the side-by-side step-time ratio")
    p.add_argument("--timing-steps", type=int, default=10)
    p.add_argument("--timing-rounds", type=int, default=6)
    p.add_argument("--quick", action="store_true", help="smoke pass: one case, 2 seeds of 20 steps")
    a = p.parse_args(argv)
    if a.quick:
        a.cases, a.seeds, a.steps, a.timing_steps, a.timing_rounds = ["moe-d32"], 2, 20, 2, 2
    tmp = None
    if a.results is None:
        tmp = tempfile.TemporaryDirectory()
        a.results = Path(tmp.name) / "runs.jsonl"
    step_times = {} if a.analyse_only else timing(a.cases, a.timing_steps, a.timing_rounds)
    if not (a.timing_only or a.analyse_only):
        sweep(a.cases, a.seeds, a.steps, a.results)
    parity = {} if a.timing_only else analyse(done(a.results), a.steps)
    for case, r in parity.items():
        r.update(step_times.get(case, {}))
    return emit(
        "bf16_parity",
        "bf16 final eval loss within the fp32 seed noise (Welch p >= 0.05 and |diff| < 2 SE)",
        {
            "parity": {c: r["parity"] for c, r in parity.items()},
            "step_ratio_bf16_fp32": {c: r["step_ratio_bf16_fp32"] for c, r in step_times.items()},
        },
        steps=a.steps,
        seeds=a.seeds,
        cases=parity,
        timing=step_times,
    )


if __name__ == "__main__":
    main()
