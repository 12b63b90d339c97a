"""Step times for `rlrs plan`'s run-time estimate: the FLOP model's, and the
ones the finished runs under the results root measured, which calibrate it.

A run's compute shape (SHAPE_FIELDS) decides its step time; its lr,
schedule, init, parametrization and seed do not. A planned run takes:

- measured: the mean `step_cpu_time_s` (summary.json: the CPU seconds of the
  mean train step, evaluations left out) of the finished runs of its shape
  (completed, and trained where they lie: a reused copy is its original's
  measurement); for a shape none of whose runs recorded CPU time (runs from
  before it was), their wall-clock `step_time_s`. CPU time is what a core
  spends on the run, whatever else shares it; wall time adds the waiting (a
  shared machine's d32 x 2 steps: 18 ms on idle cores, 109 ms on average
  under study-cpu's first searches' load);
- FLOP model x factor: where no finished run has its shape, the FLOP model's
  step time times the calibration factor, the median over the finished
  shapes of (their mean measured / modelled step time): of the planning
  study's own runs (and those of the studies it reuses runs from) where it
  has some on the run's device, since they ran with its code under its load,
  per family (dense or MoE) where that family has some; else of all runs;
- FLOP model only: where nothing on its device has finished.

The mean, not the median: a plan's total is a sum of run times, which the
mean predicts if the load stays what it was. On a shared machine the load is
skewed (study-cpu's first 146 runs at d32 x 2: median 46 ms a step, mean 109
ms; their summed wall time is what the mean predicts, 2.4x what the median
does), so the median is kept beside it as the typical step. Measured step
times move with the load (several-fold), the code and the CPU they ran on,
and the ratio moves with the shape; so each estimate keeps its spread: the
quartiles of a shape's runs; of a factor, the lowest and highest quartile /
modelled over its shapes.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path

from rlrs import atomic, paths, rundir
from rlrs.config import DEFAULTS, MOE_DEFAULTS
from rlrs.model import train_flops_per_token

# The FLOP model, calibrated once by hand on this kind of machine (2 cores, one
# torch thread per run, byte vocabulary, seq 128, batch 16; the stack notes'
# throughput table and the demo's CPU time): a step costs a fixed ~10 ms of
# Python/dispatch overhead plus its FLOPs at ~50 GFLOP/s per thread, and a
# run ~2 s to start (job process, torch import). On cuda an effective 1e14
# FLOP/s is assumed (bf16, ~30% of an H100's peak). The finished runs correct
# it (above): small widths and MoE dispatch run slower, large widths faster.
CPU_FLOPS_PER_THREAD = 5e10


CPU_STEP_OVERHEAD_S = 0.010


RUN_START_S = 2.0


GPU_FLOPS = 1e14


# The run-config fields that decide a step's time (a field a config lacks takes
# its default: runs from before the field existed ran at that default).
SHAPE_FIELDS = (
    "model.vocab_size",
    "model.seq_len",
    "model.d_model",
    "model.n_layers",
    "model.n_heads",
    "model.d_ff",
    "model.moe.n_experts",
    "model.moe.top_k",
    "model.moe.granularity",
    "model.moe.capacity_factor",
    "train.batch_size",
    "train.device",
    "train.precision",
    "train.threads",
    "train.compile",
    "train.parallel",
    "train.micro_batch_size",
)

MEASURED, FACTOR, MODEL = "measured", "factor", "model"  # StepTime.source


def _field(cfg: dict, dotted: str):
    *blocks, key = dotted.split(".")
    node, default = cfg, DEFAULTS
    for b in blocks:
        node, default = (node or {}).get(b), (MOE_DEFAULTS if b == "moe" else default[b])
        if node is None:  # a dense model's MoE fields
            return None
    return node.get(key, default.get(key))


def shape(cfg: dict) -> tuple:
    """A run config's compute shape: ((field, value), ...) over SHAPE_FIELDS."""
    return tuple((f, _field(cfg, f)) for f in SHAPE_FIELDS)


def family(shape_key: tuple) -> str:
    return "moe" if dict(shape_key)["model.moe.n_experts"] is not None else "dense"


def describe(shape_key: tuple) -> str:
    """`d32 x 2, 8 experts top-1, batch 16 x 128, fp32`: a shape in a few words."""
    s = dict(shape_key)
    out = f"d{s['model.d_model']} x {s['model.n_layers']}"
    if s["model.moe.n_experts"] is not None:
        out += f", {s['model.moe.n_experts']} experts top-{s['model.moe.top_k']}"
    out += f", batch {s['train.batch_size']} x {s['model.seq_len']}, {s['train.precision']}"
    if s["train.threads"] != 1:
        out += f", {s['train.threads']} threads"
    return out + (", compiled" if s["train.compile"] else "")


def _cpu(cfg: dict) -> bool:
    return cfg["train"]["device"] != "cuda"


def flop_rate(cfg: dict) -> float:
    """The FLOP model's FLOP/s for a run."""
    return CPU_FLOPS_PER_THREAD * cfg["train"]["threads"] if _cpu(cfg) else GPU_FLOPS


def model_step_seconds(cfg: dict, per_token: float | None = None) -> float:
    """The FLOP model's time of one training step of a resolved run config
    (per_token: its train_flops_per_token, when the caller has it)."""
    per_token = train_flops_per_token(cfg["model"]) if per_token is None else per_token
    flops = cfg["train"]["batch_size"] * cfg["model"]["seq_len"] * per_token
    return (CPU_STEP_OVERHEAD_S if _cpu(cfg) else 0.0) + flops / flop_rate(cfg)


@dataclass(frozen=True)
class Factor:
    """measured / modelled step time over a set of finished shapes."""

    basis: str  # whose runs: "dense runs of study-cpu", "all MoE runs", ...
    ratios: tuple[float, ...]  # one per shape: the mean of its runs / its FLOP-model step time
    medians: tuple[float, ...]  # one per shape: the median of its runs / its FLOP-model step time
    low: float  # the lowest lower quartile / modelled over the shapes
    high: float  # the highest upper quartile / modelled
    runs: int

    @property
    def value(self) -> float:
        return statistics.median(self.ratios)

    @property
    def median_value(self) -> float:
        return statistics.median(self.medians)

    def __str__(self) -> str:
        n = len(self.ratios)
        return (
            f"{self.basis}: x{self.value:.2f} at the mean, x{self.median_value:.2f} at the median "
            f"(means per shape {min(self.ratios):.2f}-{max(self.ratios):.2f}, quartiles {self.low:.2f}-{self.high:.2f}; "
            f"{n} shape{'s' * (n > 1)}, {self.runs} runs)"
        )


@dataclass(frozen=True)
class StepTime:
    """One planned run's estimated step time and what it rests on."""

    seconds: float  # the estimate: the measured runs' mean, or the FLOP model's step time x Factor.value
    median: float  # the measured runs' median (x factor: x Factor.median_value): the typical step
    low: float  # its spread: the measured runs' lower quartile (x factor: x Factor.low); FLOP model: seconds
    high: float
    source: str  # MEASURED | FACTOR | MODEL
    runs: int  # the finished runs it rests on (measured: of its shape; x factor: behind the factor)
    factor: float  # seconds / the FLOP model's step time
    of: Factor | None = None  # x factor: the factor
    cpu_time: bool = False  # measured: in CPU seconds (else wall clock)


def _quartiles(xs: list[float]) -> tuple[float, float]:
    if len(xs) < 2:
        return xs[0], xs[0]
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return q[0], q[2]


FAMILY_NAMES = {"dense": "dense", "moe": "MoE"}


@dataclass
class Calibration:
    """The finished runs' measured step times, by compute shape and study."""

    root: Path
    measured: dict[tuple, dict[str, list[float]]] = field(default_factory=dict)  # shape -> study -> step_time_s
    modelled: dict[tuple, float] = field(default_factory=dict)  # shape -> the FLOP model's step time
    hosts: set[str] = field(default_factory=set)
    cpu_timed: set[tuple] = field(default_factory=set)  # shapes measured in CPU seconds (else wall clock)

    @property
    def runs(self) -> int:
        return sum(len(t) for by_study in self.measured.values() for t in by_study.values())

    def times(self, key: tuple, studies: tuple[str, ...] | None = None) -> list[float]:
        """The measured step times of a shape (of the runs of some studies only)."""
        return [t for s, ts in self.measured.get(key, {}).items() if studies is None or s in studies for t in ts]

    def factor(self, device: str, fam: str | None, studies: tuple[str, ...] | None) -> Factor | None:
        """The Factor over the finished shapes on a device, of one family (None:
        both) and of the runs of some studies (None: all), or None without any."""
        ratios, medians, lows, highs, runs = [], [], [], [], 0
        for key in self.measured:
            times = self.times(key, studies)
            if times and dict(key)["train.device"] == device and fam in (None, family(key)):
                lo, hi = _quartiles(times)
                ratios.append(statistics.fmean(times) / self.modelled[key])
                medians.append(statistics.median(times) / self.modelled[key])
                lows.append(lo / self.modelled[key])
                highs.append(hi / self.modelled[key])
                runs += len(times)
        if not ratios:
            return None
        whose = f"{FAMILY_NAMES[fam]} runs" if fam else "runs"
        basis = f"{whose} of {', '.join(studies)}" if studies is not None else f"all {whose}"
        return Factor(basis, tuple(ratios), tuple(medians), min(lows), max(highs), runs)

    def step_time(self, key: tuple, model: float, studies: tuple[str, ...] = ()) -> StepTime:
        """The step time of a run of shape `key` whose FLOP-model step time is
        `model`, planned by a study that reads `studies` (itself, the studies it
        reuses runs from): its shape's measured mean, else the factor of the
        first of these with finished runs on its device: the studies' runs of
        its family, the studies' runs, all runs of its family, all runs."""
        times = self.times(key)
        if times:
            mean = statistics.fmean(times)
            cpu = key in self.cpu_timed
            return StepTime(
                mean, statistics.median(times), *_quartiles(times), MEASURED, len(times), mean / model, cpu_time=cpu
            )
        device, fam = dict(key)["train.device"], family(key)
        for scope, f in ((studies, fam), (studies, None), (None, fam), (None, None)):
            if scope == ():
                continue
            fit = self.factor(device, f, scope)
            if fit is not None:
                med, lo, hi = model * fit.median_value, model * fit.low, model * fit.high
                return StepTime(model * fit.value, med, lo, hi, FACTOR, fit.runs, fit.value, fit)
        return StepTime(model, model, model, model, MODEL, 0, 1.0)


def load(root: Path | None = None) -> Calibration:
    """The measured step times of every finished run under root (default the
    results root): <study>/runs/*/ with config.json and a completed
    summary.json, reused copies left out."""
    cal = Calibration(Path(root) if root is not None else paths.results_root())
    cpu: dict[tuple, dict[str, list[float]]] = {}  # shape -> study -> step_cpu_time_s
    for run_dir in sorted(cal.root.glob(f"*/{paths.RUNS_DIR}/*/")):
        if (run_dir / rundir.REUSED).exists():
            continue
        summary = rundir.read_summary(run_dir)
        cfg = atomic.read_json(run_dir / rundir.CONFIG)
        if not isinstance(summary, dict) or summary.get("status") != "completed" or not isinstance(cfg, dict):
            continue
        t = summary.get("step_time_s")
        if not _positive(t):
            continue
        try:
            key = shape(cfg)
            if key not in cal.modelled:
                cal.modelled[key] = model_step_seconds(cfg)
        except (KeyError, TypeError, AttributeError, ValueError):  # not a run config this code can read
            continue
        study = run_dir.parent.parent.name
        cal.measured.setdefault(key, {}).setdefault(study, []).append(float(t))
        if _positive(c := summary.get("step_cpu_time_s")):
            cpu.setdefault(key, {}).setdefault(study, []).append(float(c))
        if summary.get("host"):
            cal.hosts.add(str(summary["host"]))
    cal.measured |= cpu  # a shape with CPU-timed runs rests on them alone
    cal.cpu_timed = set(cpu)
    return cal


def _positive(x) -> bool:
    return not isinstance(x, bool) and isinstance(x, (int, float)) and x > 0
