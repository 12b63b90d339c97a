"""What a study will cost before it runs: tokens, FLOPs and an estimated
time per run (`rlrs plan`). Imports the model (torch) to count parameters."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from rlrs import atomic, paths, rundir
from rlrs.errors import ConfigError
from rlrs.executor import executor_settings, world_size
from rlrs.model import train_flops_per_token
from rlrs.study import calibration as C
from rlrs.study import reuse, selection
from rlrs.study.plan import Plan, make_plan
from rlrs.study.searches import load_state, read_result, searches
from rlrs.study.validate import is_staged, load_study
from rlrs.tags import SWEEPS


def run_cost(cfg: dict, calibration: C.Calibration | None = None, studies: tuple[str, ...] = ()) -> dict:
    """Tokens, FLOPs and an estimated time for one resolved run config: its
    steps at the step time the calibration gives it (rlrs.study.calibration;
    without one, the FLOP model's), its evaluations at the FLOP model's time
    scaled by the same factor, and the run's start. studies: whose finished
    runs calibrate it first (Calibration.step_time)."""
    model, train, data = cfg["model"], cfg["train"], cfg["data"]
    steps = train["steps"]
    tokens = steps * train["batch_size"] * model["seq_len"]
    per_token = train_flops_per_token(model)
    # Evaluation: a forward pass (~1/3 of a training step's FLOPs per token)
    # over the fixed eval budget every eval_interval steps and at the end.
    n_evals = steps // train["eval_interval"] + (steps % train["eval_interval"] != 0)
    eval_flops = n_evals * data["eval_tokens"] * per_token / 3
    key, model_step = C.shape(cfg), C.model_step_seconds(cfg, per_token)
    step = (calibration or C.Calibration(Path())).step_time(key, model_step, studies)
    eval_model = eval_flops / C.flop_rate(cfg)

    def seconds(step_s: float) -> float:
        return C.RUN_START_S + steps * step_s + eval_model * step_s / model_step

    return {
        "tokens": tokens,
        "flops": tokens * per_token + eval_flops,
        "seconds": seconds(step.seconds),
        "low": seconds(step.low),  # the spread of the step time behind it
        "high": seconds(step.high),
        "median": seconds(step.median),  # at the measured runs' median step time
        "device": train["device"],
        "step": step,
        "shape": key,
        "size": (cfg.get("meta") or {}).get("size"),
    }


@dataclass
class Estimate:
    """A study's plan with the cost of each of its runs, and the budget of
    every search still to run (`rlrs plan`). A run another study trains for
    this one (reused: finished in a study of reuse_runs_from; shared: one
    that a study given as `after` plans) costs nothing here: every total
    counts only the runs this study trains itself."""

    plan: Plan
    budget: list[tuple[str, int, dict, str]]  # (label, runs at most, one run's cost, digest) per pending search
    costs: dict[str, dict]  # run id (or tune:<label>:<i>, select:<label>:<i>) -> run_cost
    # staged studies: (cell, first-grid runs, worst-case extra runs, one run's cost, digest) per pending selection
    selection: list[tuple[str, int, int, dict, str]] = None
    pending_sizes: list[str] = None  # sizes whose stage-2 lrs (run ids) wait for stage 1
    failed: dict[tuple[str, str], str] = None  # (size, arm) -> why: cells whose selection failed (size not measured)
    reused: set[str] = field(default_factory=set)  # cost keys finished in a reuse_runs_from study now
    shared: set[str] = field(default_factory=set)  # cost keys an `after` study trains first
    after: list[str] = field(default_factory=list)  # the `after` studies' names
    calibration: C.Calibration | None = None  # the finished runs' step times the costs rest on

    def trains(self, key: str) -> bool:
        """Whether this study trains the run itself (not reused, not shared)."""
        return key not in self.reused and key not in self.shared

    def _own(self):
        return [c for k, c in self.costs.items() if self.trains(k)]

    def stage_seconds(self, prefix: str) -> float:
        return sum(c["seconds"] for k, c in self.costs.items() if k.startswith(prefix) and self.trains(k))

    def total(self, key: str) -> float:
        return sum(c[key] for c in self._own())

    def seconds(self, device: str) -> float:
        return sum(c["seconds"] for c in self._own() if c["device"] == device)

    def spread(self, device: str) -> tuple[float, float, float]:
        """(median, low, high) of seconds(device): at the median of the step
        times behind it, and at their quartiles."""
        own = [c for c in self._own() if c["device"] == device]
        return tuple(sum(c[k] for c in own) for k in ("median", "low", "high"))

    def calibrated(self, device: str) -> bool:
        """Whether some run on the device rests on measured step times."""
        return any(c["step"].source != C.MODEL for c in self._own() if c["device"] == device)

    def devices(self) -> list[str]:
        return sorted({c["device"] for c in self.costs.values()})

    def sweep(self, sweep: str) -> tuple[int, float]:
        """(unique runs, estimated seconds) of one sweep's requests, runs that
        other sweeps also ask for included (they train once for both)."""
        ids = {r["run_id"] for r in self.plan.runs if r["sweep"] == sweep}
        return len(ids), sum(self.costs[i]["seconds"] for i in ids if self.trains(i))

    def counted(self, keys: set[str]) -> tuple[int, float]:
        """(runs, one-thread seconds) of some cost keys."""
        return len(keys), sum(self.costs[k]["seconds"] for k in keys)


def _finished_share(result_path, digest: str, roots: tuple, run_ids) -> int:
    """How many runs of an unfinished search or selection another study
    (results/<study>/ in `roots`) has run with the same definition already:
    a replay here copies them (the most over the studies)."""
    best = 0
    for root in roots:
        doc = atomic.read_json(result_path(root))
        if doc is not None and doc.get("digest") == digest:
            done = sum(rundir.finished_summary(root / paths.RUNS_DIR / rid) is not None for rid in run_ids(doc))
            best = max(best, done)
    return best


def _cell_runs(doc: dict) -> list[str]:
    return [rid for point in doc.get("points") or [] for rid in (point.get("runs") or {}).values()]


def load_after(study: dict, files: list[Path]) -> tuple:
    """`rlrs plan --after`: (study, path) of each file, a study this one reuses runs from."""
    out = []
    for path in files:
        other = load_study(path)
        if other["study"] not in reuse.sources(study):
            raise ConfigError(
                "--after",
                f"{path} is study {other['study']!r}, which this study does not reuse runs from "
                f"(reuse_runs_from: {', '.join(reuse.sources(study)) or 'none'})",
            )
        out.append((other, Path(path)))
    return tuple(out)


def estimate(study: dict, study_path: Path, after: tuple = (), calibration: C.Calibration | None = None) -> Estimate:
    """The cost of a validated study. With a tune block: each search's run
    budget, then the transfer counted as if every search were done (sizes
    still waiting for a search are counted with the arm's untuned settings,
    which cost the same). With reuse_runs_from: a search or selection another
    listed study finished stands in for this one's (a replay decides the
    same), and the runs finished there cost nothing. after: (study dict,
    path) of listed studies that run first: what they plan costs nothing
    either. calibration: the finished runs' step times (default: those under
    the results root now)."""
    cal = calibration if calibration is not None else C.load()
    srcs = reuse.sources(study)
    own = (study["study"], *srcs)  # whose finished runs calibrate the FLOP model first
    replay = tuple(paths.results_dir(s) for s in srcs)
    reused_first: dict[str, int] = {}  # cost-key prefix -> how many of its runs are finished elsewhere
    budget: list[tuple[str, int, dict, str]] = []
    if study.get("tune"):
        for srch in searches(study):
            if read_result(srch) is None and not any(read_result(srch, r) for r in replay):
                cost = run_cost(srch.candidate(srch.start)[1], cal, own) | {"size": srch.size}
                label = f"{srch.size} x {srch.arm} ({srch.space}, {len(srch.parameters)} parameters)"
                budget.append((label, srch.run_budget(), cost, srch.digest()))
                reused_first[f"tune:{label}:"] = _finished_share(
                    srch.result_path, srch.digest(), replay, lambda d: list(d.get("runs") or {})
                )
        tune_state = load_state(study, assume_done=True, replay=replay)
    else:
        tune_state = None
    pending_sel: list[tuple[str, int, int, dict, str]] = []
    select_state, waiting, failed = None, [], {}
    if is_staged(study):
        # Stage 1 counted as its first grids plus every extra point the cap allows (the worst
        # case); stage 2 as if each pending cell chose its centre (the same runs at another lr).
        known = load_state(study, replay=replay) if study.get("tune") else None
        done_state = selection.load_state(study, known, replay=replay)
        waiting, failed = sorted(done_state.pending), done_state.failed
        for c in selection.cells(study, tune_state.tuned if tune_state is not None else None):
            if selection.read_result(c) is None and not any(selection.read_result(c, r) for r in replay):
                n = len(c.selection_seeds)
                cost = run_cost(c.candidate(c.centre_lr, 0)[1], cal, own) | {"size": c.size}
                pending_sel.append((c.key, len(c.grid) * n, c.max_extra_points * n, cost, c.digest()))
                reused_first[f"select:{c.key}:"] = _finished_share(c.result_path, c.digest(), replay, _cell_runs)
        select_state = selection.load_state(study, tune_state, assume_done=True, replay=replay)
    plan = make_plan(study, study_file=study_path, tune_state=tune_state, select_state=select_state)
    costs = {rid: run_cost(cfg, cal, own) for rid, cfg in plan.configs.items()}
    for label, n, cost, _ in budget:
        costs.update({f"tune:{label}:{i}": cost for i in range(n)})
    for label, n, extra, cost, _ in pending_sel:
        costs.update({f"select:{label}:{i}": cost for i in range(n)})
        costs.update({f"select-extra:{label}:{i}": cost for i in range(extra)})
    root = paths.results_dir(plan.name).parent
    reused = {rid for rid, cfg in plan.configs.items() if reuse.find(rid, cfg, root, srcs) is not None}
    for prefix, k in reused_first.items():
        keys = [key for key in costs if key.startswith(prefix)]
        if prefix.startswith("select:"):  # the extra points come after the grid
            keys += [key for key in costs if key.startswith("select-extra:" + prefix[len("select:") :])]
        reused |= set(keys[:k])
    est = Estimate(
        plan, budget, costs, selection=pending_sel if is_staged(study) else None, pending_sizes=waiting, failed=failed
    )
    est.reused, est.calibration = reused, cal
    for other, other_path in after:
        first = estimate(other, other_path, calibration=cal)
        pending = {d for *_, d in first.budget} | {d for *_, d in first.selection or []}
        shared = set(first.plan.configs) & set(costs)
        shared |= {k for label, *_, d in budget if d in pending for k in costs if k.startswith(f"tune:{label}:")}
        for label, *_, d in pending_sel if pending_sel else []:
            if d in pending:
                shared |= {k for k in costs if k.startswith((f"select:{label}:", f"select-extra:{label}:"))}
        est.shared |= shared - reused
        est.after.append(first.plan.name)
    return est


def fmt_seconds(s: float) -> str:
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


def fmt_ms(s: float) -> str:
    return f"{s * 1e3:.1f} ms" if s < 0.01 else f"{s * 1e3:.0f} ms"


def _source(step: C.StepTime) -> str:
    if step.source == C.MEASURED:
        spread = f"; median {fmt_ms(step.median)}, quartiles {fmt_ms(step.low)} to {fmt_ms(step.high)}"
        clock = "CPU time" if step.cpu_time else "wall clock"
        return f"measured on {step.runs} run{'s' * (step.runs > 1)} ({clock}; mean{spread if step.runs > 1 else ''})"
    if step.source == C.FACTOR:
        return f"FLOP model {fmt_ms(step.seconds / step.factor)} x {step.factor:.2f} (the factor of {step.of.basis})"
    return "FLOP model only (no finished run to calibrate on)"


def step_lines(est: Estimate) -> list[str]:
    """`rlrs plan`: each compute shape this study trains, its step time and
    what it rests on (measured, FLOP model x factor, FLOP model only), and
    the calibration factors."""
    rows: dict[tuple, dict] = {}
    for key, c in est.costs.items():
        if est.trains(key):
            r = rows.setdefault(c["shape"], {"sizes": set(), "runs": 0, "seconds": 0.0, "step": c["step"]})
            r["sizes"].add(c["size"] or "-")
            r["runs"] += 1
            r["seconds"] += c["seconds"]
    labels = {shape: ", ".join(sorted(r["sizes"])) for shape, r in rows.items()}
    w = max(map(len, labels.values()), default=0) + 2
    out = [f"{'time per step, by compute shape':<{w + 48}}{'runs':>6}{'time':>10}{'step':>10}  what it rests on"]
    for shape, r in sorted(rows.items(), key=lambda kv: (labels[kv[0]], kv[1]["step"].seconds)):
        out.append(
            f"  {labels[shape]:<{w}}{C.describe(shape):<46}{r['runs']:>6}{fmt_seconds(r['seconds']):>10}"
            f"{fmt_ms(r['step'].seconds):>10}  {_source(r['step'])}"
        )
    cal = est.calibration
    if cal is None or not cal.runs:
        out.append(f"calibration: no finished runs under {cal.root if cal else 'results'}/: the FLOP model alone")
        return out
    out.append(
        f"calibration: {cal.runs} finished runs of {len(cal.measured)} shapes under {cal.root}/ "
        f"(host {', '.join(sorted(cal.hosts)) or 'unknown'}); factor = measured / FLOP-model step time, "
        "the median over the shapes of their mean (their median beside it):"
    )
    used = {r["step"].of.basis: r["step"].of for r in rows.values() if r["step"].of is not None}
    out += [f"  used: {f}" for f in used.values()]
    for device in sorted({dict(k)["train.device"] for k in cal.measured}):
        fits = [cal.factor(device, fam, None) for fam in ("dense", "moe")]
        out += [f"  {device}, for comparison: {f}" for f in fits if f is not None and f.basis not in used]
    return out


def _not_trained(est: Estimate, prefix: str) -> str:
    """'; k reused' for the cost keys under a prefix another study trains."""
    k = sum(1 for key in est.costs if key.startswith(prefix) and not est.trains(key))
    return f"; {k} of them not trained here (reused)" if k else ""


def stage_lines(est: Estimate) -> list[str]:
    """`rlrs plan` of a staged study: stage 1 still to run, and what stage 2 waits for."""
    study, out = est.plan.study_config, []
    seeds = ", ".join(map(str, study["selection_seeds"]))
    if est.selection:
        out.append(f"stage 1, lr selection on selection seeds [{seeds}] (cells still to select):")
        rows = [(label, n, extra, f"{label}:") for label, n, extra, *_ in est.selection]
        rows.append(("selection", sum(r[1] for r in rows), sum(r[2] for r in rows), ""))
        for label, n, extra, key in rows:
            out.append(
                f"  {label:<40}{n:>6} runs + up to {extra:>3} beyond the grid  "
                f"{fmt_seconds(est.stage_seconds('select:' + key))} "
                f"(+ {fmt_seconds(est.stage_seconds('select-extra:' + key))})"
                + (_not_trained(est, "select:" + key) if key else "")
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


def reuse_lines(est: Estimate) -> list[str]:
    """`rlrs plan` of a study with reuse_runs_from: what other studies train for it."""
    srcs = reuse.sources(est.plan.study_config)
    out = [f"reuse_runs_from {', '.join(srcs)}: a run finished there is copied, not trained (no cost here)"]
    out += [
        f"  {s}: no {paths.results_dir(s)}/ here: nothing to reuse from it"
        for s in srcs
        if not paths.results_dir(s).is_dir()
    ]
    own = {k for k in est.costs if est.trains(k)}
    rows = [("reused: finished there now", est.reused)]
    if est.after:
        rows.append((f"shared: planned by {', '.join(est.after)} (runs first)", est.shared))
    rows.append(("new: trained by this study", own))
    for label, keys in rows:
        n, secs = est.counted(keys)
        out.append(f"  {label:<52}{n:>6} runs  {fmt_seconds(secs)} of one-thread runs")
    return out


def plan_lines(est: Estimate, cores: int) -> list[str]:
    """`rlrs plan`'s body: the tune budget, the stages, runs per sweep, tokens, FLOPs and time."""
    plan, out = est.plan, []
    if est.budget:
        out.append("tune: searches still to run (runs at most: the run budget, or 1 + passes x parameters x factors)")
        for label, n, *_ in est.budget:
            secs = est.stage_seconds(f"tune:{label}:")
            out.append(f"  {label:<52}{n:>6} runs  <= {fmt_seconds(secs)}" + _not_trained(est, f"tune:{label}:"))
        out.append(
            f"  {'tune budget':<52}{sum(n for _, n, *_ in est.budget):>6} runs (the transfer below starts after)"
        )
        out.append("transfer (the study's sweeps with the tuned settings):")
    if est.selection is not None:
        out += stage_lines(est)
    # Unique runs per sweep, each counted under its first requester (a run two sweeps ask for trains once).
    counts, secs, own = plan.sweep_counts(), {}, {}
    for rid, cfg in plan.configs.items():
        sweep = cfg["meta"]["sweep"]
        secs[sweep] = secs.get(sweep, 0.0) + (est.costs[rid]["seconds"] if est.trains(rid) else 0.0)
        own[sweep] = own.get(sweep, 0) + est.trains(rid)
    reusing = bool(reuse.sources(plan.study_config))
    out.append(f"{'sweep':<14}{'requests':>10}{'time (1 thread)':>18}" + (f"{'trained here':>14}" if reusing else ""))
    out += [
        f"{sw:<14}{counts[sw]:>10}{fmt_seconds(secs.get(sw, 0.0)):>18}" + (f"{own.get(sw, 0):>14}" if reusing else "")
        for sw in SWEEPS
        if sw in counts
    ]
    out.append(f"{'total':<14}{len(plan.runs):>10}   unique runs (trained once each): {len(plan.configs)}")
    if reusing:
        out += reuse_lines(est)
    out += step_lines(est)
    out.append(f"training tokens: {est.total('tokens'):,}")
    out.append(f"estimated FLOPs: {est.total('flops'):.3g}")
    for device in est.devices():
        s = est.seconds(device)
        if device == "cuda":
            gpus = world_size(executor_settings(plan.study_config))  # one GPU per process of a run's job
            out.append(
                f"estimated GPU time: {s / 3600:,.1f} GPU-hours, {gpus} GPU(s) per run "
                f"(executor.tasks_per_node x nodes): ~{fmt_seconds(s / gpus)} wall for the runs one after another "
                f"(assumes {C.GPU_FLOPS:.0e} effective FLOP/s per GPU and perfect data-parallel scaling; an estimate)"
            )
        else:
            flop_model = (
                f"{C.CPU_FLOPS_PER_THREAD / 1e9:.0f} GFLOP/s per thread + {C.CPU_STEP_OVERHEAD_S * 1e3:.0f} ms/step"
            )
            if est.calibrated(device):
                median, low, high = est.spread(device)
                how = (
                    f"at mean step times; {fmt_seconds(median)} at their medians, {fmt_seconds(low)} to "
                    f"{fmt_seconds(high)} at their quartiles; step times measured "
                    f"or the FLOP model ({flop_model}) x its factor, as above, + {C.RUN_START_S:.0f} s/run"
                )
            else:
                how = f"assumes {flop_model} + {C.RUN_START_S:.0f} s/run"
            out.append(
                f"estimated {device.upper()} time: {fmt_seconds(s)} of one-thread runs, "
                f"~{fmt_seconds(s / cores)} wall with `snakemake -c {cores}` ({how}; an estimate)"
            )
    return out
