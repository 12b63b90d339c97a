"""What a study will cost before it runs: tokens, FLOPs and an estimated
time per run (`rlrs plan`). Imports the model (torch) to count parameters."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rlrs.executor import executor_settings, world_size
from rlrs.model import train_flops_per_token
from rlrs.study import selection
from rlrs.study.plan import Plan, make_plan
from rlrs.study.searches import load_state, read_result, searches
from rlrs.study.validate import is_staged
from rlrs.tags import SWEEPS

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


def run_cost(cfg: dict) -> dict:
    """Tokens, FLOPs and an estimated time for one resolved run config."""
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


@dataclass
class Estimate:
    """A study's plan with the cost of each of its runs, and the budget of
    every search still to run (`rlrs plan`)."""

    plan: Plan
    budget: list[tuple[str, int, dict]]  # (label, runs at most, one run's cost) per pending search
    costs: dict[str, dict]  # run id (or tune:<label>:<i>, select:<label>:<i>) -> run_cost
    # staged studies: (cell, first-grid runs, worst-case extra runs, one run's cost) per pending selection
    selection: list[tuple[str, int, int, dict]] = None
    pending_sizes: list[str] = None  # sizes whose stage-2 lrs (run ids) wait for stage 1
    failed: dict[tuple[str, str], str] = None  # (size, arm) -> why: cells whose selection failed (size not measured)

    def stage_seconds(self, prefix: str) -> float:
        return sum(c["seconds"] for k, c in self.costs.items() if k.startswith(prefix))

    def total(self, key: str) -> float:
        return sum(c[key] for c in self.costs.values())

    def seconds(self, device: str) -> float:
        return sum(c["seconds"] for c in self.costs.values() if c["device"] == device)

    def devices(self) -> list[str]:
        return sorted({c["device"] for c in self.costs.values()})

    def sweep(self, sweep: str) -> tuple[int, float]:
        """(unique runs, estimated seconds) of one sweep's requests, runs that
        other sweeps also ask for included (they train once for both)."""
        ids = {r["run_id"] for r in self.plan.runs if r["sweep"] == sweep}
        return len(ids), sum(self.costs[i]["seconds"] for i in ids)


def estimate(study: dict, study_path: Path) -> Estimate:
    """The cost of a validated study. With a tune block: each search's run
    budget, then the transfer counted as if every search were done (sizes
    still waiting for a search are counted with the arm's untuned settings,
    which cost the same)."""
    budget: list[tuple[str, int, dict]] = []
    if study.get("tune"):
        for srch in searches(study):
            if read_result(srch) is None:
                cost = run_cost(srch.candidate(srch.start)[1])
                budget.append(
                    (
                        f"{srch.size} x {srch.arm} ({srch.space}, {len(srch.parameters)} parameters)",
                        srch.run_budget(),
                        cost,
                    )
                )
        tune_state = load_state(study, assume_done=True)
    else:
        tune_state = None
    pending_sel: list[tuple[str, int, int, dict]] = []
    select_state, waiting, failed = None, [], {}
    if is_staged(study):
        # Stage 1 counted as its first grids plus every extra point the cap allows (the worst
        # case); stage 2 as if each pending cell chose its centre (the same runs at another lr).
        done_state = selection.load_state(study, load_state(study) if study.get("tune") else None)
        waiting, failed = sorted(done_state.pending), done_state.failed
        for c in selection.cells(study, tune_state.tuned if tune_state is not None else None):
            if selection.read_result(c) is None:
                n = len(c.selection_seeds)
                pending_sel.append(
                    (c.key, len(c.grid) * n, c.max_extra_points * n, run_cost(c.candidate(c.centre_lr, 0)[1]))
                )
        select_state = selection.load_state(study, tune_state, assume_done=True)
    plan = make_plan(study, study_file=study_path, tune_state=tune_state, select_state=select_state)
    costs = {rid: run_cost(cfg) for rid, cfg in plan.configs.items()}
    for label, n, cost in budget:
        costs.update({f"tune:{label}:{i}": cost for i in range(n)})
    for label, n, extra, cost in pending_sel:
        costs.update({f"select:{label}:{i}": cost for i in range(n)})
        costs.update({f"select-extra:{label}:{i}": cost for i in range(extra)})
    staged = is_staged(study)
    return Estimate(
        plan, budget, costs, selection=pending_sel if staged else None, pending_sizes=waiting, failed=failed
    )


def fmt_seconds(s: float) -> str:
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


def stage_lines(est: Estimate) -> list[str]:
    """`rlrs plan` of a staged study: stage 1 still to run, and what stage 2 waits for."""
    study, out = est.plan.study_config, []
    seeds = ", ".join(map(str, study["selection_seeds"]))
    if est.selection:
        out.append(f"stage 1, lr selection on selection seeds [{seeds}] (cells still to select):")
        rows = [(label, n, extra, n * c["seconds"], extra * c["seconds"]) for label, n, extra, c in est.selection]
        total = ("selection", sum(r[1] for r in rows), sum(r[2] for r in rows))
        rows.append(total + (est.stage_seconds("select:"), est.stage_seconds("select-extra:")))
        for label, n, extra, secs, extra_secs in rows:
            out.append(
                f"  {label:<40}{n:>6} runs + up to {extra:>3} beyond the grid  "
                f"{fmt_seconds(secs)} (+ {fmt_seconds(extra_secs)})"
            )
    else:
        out.append(f"stage 1, lr selection on selection seeds [{seeds}]: done (its runs: sweep lr below)")
    out.append(f"stage 2, measurement at the chosen lrs on the reported seeds [{', '.join(map(str, study['seeds']))}]:")
    if est.pending_sizes:
        out.append(
            f"  not yet known: the lrs (hence the run ids) at {', '.join(est.pending_sizes)} wait for stage 1; "
            "counted at the grid's centre (the same runs and cost at another lr)"
        )
    for (size, arm), why in (est.failed or {}).items():
        out.append(f"  {size}: not measured, the lr selection of {size}.{arm} failed ({why})")
    return out


def plan_lines(est: Estimate, cores: int) -> list[str]:
    """`rlrs plan`'s body: the tune budget, the stages, runs per sweep, tokens, FLOPs and time."""
    plan, out = est.plan, []
    if est.budget:
        out.append("tune: searches still to run (runs at most: the run budget, or 1 + passes x parameters x factors)")
        for label, n, cost in est.budget:
            out.append(f"  {label:<52}{n:>6} runs  <= {fmt_seconds(n * cost['seconds'])}")
        out.append(f"  {'tune budget':<52}{sum(n for _, n, _ in est.budget):>6} runs (the transfer below starts after)")
        out.append("transfer (the study's sweeps with the tuned settings):")
    if est.selection is not None:
        out += stage_lines(est)
    # Unique runs per sweep, each counted under its first requester (a run two sweeps ask for trains once).
    counts, secs = plan.sweep_counts(), {}
    for rid, cfg in plan.configs.items():
        secs[cfg["meta"]["sweep"]] = secs.get(cfg["meta"]["sweep"], 0.0) + est.costs[rid]["seconds"]
    out.append(f"{'sweep':<14}{'requests':>10}{'time (1 thread)':>18}")
    out += [f"{sw:<14}{counts[sw]:>10}{fmt_seconds(secs.get(sw, 0.0)):>18}" for sw in SWEEPS if sw in counts]
    out.append(f"{'total':<14}{len(plan.runs):>10}   unique runs (trained once each): {len(plan.configs)}")
    out.append(f"training tokens: {est.total('tokens'):,}")
    out.append(f"estimated FLOPs: {est.total('flops'):.3g}")
    for device in est.devices():
        s = est.seconds(device)
        if device == "cuda":
            gpus = world_size(executor_settings(plan.study_config))  # one GPU per process of a run's job
            out.append(
                f"estimated GPU time: {s / 3600:,.1f} GPU-hours, {gpus} GPU(s) per run "
                f"(executor.tasks_per_node x nodes): ~{fmt_seconds(s / gpus)} wall for the runs one after another "
                f"(assumes {GPU_FLOPS:.0e} effective FLOP/s per GPU and perfect data-parallel scaling; an estimate)"
            )
        else:
            out.append(
                f"estimated {device.upper()} time: {fmt_seconds(s)} of one-thread runs, "
                f"~{fmt_seconds(s / cores)} wall with `snakemake -c {cores}` "
                f"(assumes {CPU_FLOPS_PER_THREAD / 1e9:.0f} GFLOP/s per thread + "
                f"{CPU_STEP_OVERHEAD_S * 1e3:.0f} ms/step + {RUN_START_S:.0f} s/run; an estimate)"
            )
    return out
