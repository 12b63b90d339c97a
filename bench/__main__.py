"""`python -m bench [NAMES...] [--quick]`: run the benchmarks, each in its own
process (so one's threads, imports and memory do not colour another's), and
print every result, then one JSON object with all of them on the last line.

    python -m bench                       # everything, full settings (~15 min)
    python -m bench --quick               # smoke pass of everything (~2-3 min)
    python -m bench moe_dispatch trainer_overhead
    python -m bench --out bench/latest.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from bench.common import REPO, log, machine

# Run order: the cheap, CPU-bound ones first, the long workflow ones last.
BENCHMARKS = (
    "trainer_overhead",
    "hardware_efficiency",
    "moe_dispatch",
    "compiled_step",
    "bf16_parity",
    "results_at_scale",
    "pipeline_overhead",
    "demo_e2e",
)


def last_json(stdout: str) -> dict:
    """The benchmark's result: the JSON object on its last non-empty line."""
    lines = [line for line in stdout.splitlines() if line.strip()]
    if not lines:
        raise ValueError("no output")
    result = json.loads(lines[-1])
    if not isinstance(result, dict):
        raise ValueError(f"last line is JSON but not an object: {lines[-1][:200]}")  # noqa: TRY004 (callers catch ValueError)
    return result


def run_one(name: str, quick: bool) -> dict:
    cmd = [sys.executable, "-m", f"bench.{name}", *(["--quick"] if quick else [])]
    log(f"== {name}: {' '.join(cmd)}")
    t0 = time.perf_counter()
    # stderr (progress) passes through to the terminal; stdout is parsed.
    proc = subprocess.run(cmd, cwd=REPO, stdout=subprocess.PIPE, text=True, check=False)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        return {"benchmark": name, "error": f"exit code {proc.returncode}", "seconds": round(seconds, 1)}
    try:
        result = last_json(proc.stdout)
    except ValueError as e:
        return {"benchmark": name, "error": f"unreadable result: {e}", "seconds": round(seconds, 1)}
    result["seconds"] = round(seconds, 1)
    print(json.dumps(result), flush=True)
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument(
        "names", nargs="*", metavar="NAME", help=f"benchmarks to run (default: all): {', '.join(BENCHMARKS)}"
    )
    p.add_argument("--quick", action="store_true", help="each benchmark's smoke settings")
    p.add_argument("--out", type=Path, default=None, help="also write the combined JSON here")
    a = p.parse_args(argv)
    unknown = [n for n in a.names if n not in BENCHMARKS]
    if unknown:
        p.error(f"unknown benchmark(s) {', '.join(unknown)}; allowed: {', '.join(BENCHMARKS)}")
    names = a.names or list(BENCHMARKS)
    results = [run_one(n, a.quick) for n in names]
    combined = {"benchmark": "all", "quick": a.quick, "results": results, "machine": machine()}
    if a.out is not None:
        from rlrs.atomic import write_json  # no torch import here

        write_json(a.out, combined)
    print(json.dumps(combined), flush=True)
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
