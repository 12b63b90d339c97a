"""A training run's progress on stderr: a tqdm bar on a terminal, plain log
lines (about every 10% of the run, and at every evaluation) otherwise."""

from __future__ import annotations

import sys
import time


class Progress:
    """tqdm on a terminal, plain log lines (every ~10% of the run) otherwise."""

    def __init__(self, total: int, start: int, resumed: bool, rid: str, quiet: bool = False):
        self.bar = None
        self.total, self.rid = total, rid
        self.every = max(1, total // 10)
        self.quiet = quiet  # data-parallel ranks other than 0 print nothing
        if resumed and not quiet:
            print(f"[{rid}] resuming at step {start}/{total}", file=sys.stderr, flush=True)
        if sys.stderr.isatty() and not quiet:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, desc=rid, unit="step", dynamic_ncols=True)
        self.t0, self.s0 = time.perf_counter(), start

    def update(self, step: int, loss: float, eval_loss: float | None) -> None:
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.3f}", **({"eval": f"{eval_loss:.3f}"} if eval_loss is not None else {}))
        elif step % self.every == 0 or step == self.total or eval_loss is not None:
            rate = (step - self.s0) / max(1e-9, time.perf_counter() - self.t0)
            ev = f" eval {eval_loss:.4f}" if eval_loss is not None else ""
            print(
                f"[{self.rid}] step {step}/{self.total} loss {loss:.4f}{ev} {rate:.1f} steps/s",
                file=sys.stderr,
                flush=True,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
