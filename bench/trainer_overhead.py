"""Trainer overhead: steps/s of the rlrs trainer's step (schedule, clipping,
per-component update sizes, metric rows) vs a bare minimal PyTorch loop on
the identical model, batch, data and thread count, measured side by side in
one process (alternating blocks, best of several, so drift hits both).

Prints one JSON object on its last line: per case the two rates and
overhead = bare_steps_per_s / rlrs_steps_per_s - 1 (goal: < 0.03).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import torch

from rlrs.config import resolve
from rlrs.data import load_corpus, train_batch
from rlrs.model import GPT, ModelConfig
from rlrs.train import Trainer

CASES = {
    "dense-d64": {"d_model": 64, "n_layers": 2, "n_heads": 4, "d_ff": 256},
    "dense-d128": {"d_model": 128, "n_layers": 2, "n_heads": 4, "d_ff": 512},
    "moe-d64": {"d_model": 64, "n_layers": 2, "n_heads": 4, "d_ff": 256, "moe": {"n_experts": 8, "top_k": 1}},
    "moe-d128": {"d_model": 128, "n_layers": 2, "n_heads": 4, "d_ff": 512, "moe": {"n_experts": 8, "top_k": 1}},
}


def config(model: dict, threads: int) -> dict:
    return resolve({
        "model": {"seq_len": 128, **model},
        "data": {"eval_tokens": 4096},
        "train": {"steps": 100000, "batch_size": 16, "eval_interval": 100000, "threads": threads},
    })


def bare_loop(cfg: dict):
    """The minimal loop: forward, backward, clip, AdamW. Nothing recorded."""
    torch.manual_seed(cfg["seed"])
    model = GPT(ModelConfig.from_dict(cfg["model"]))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["optim"]["lr"], weight_decay=cfg["optim"]["weight_decay"])
    corpus = load_corpus(cfg["data"])
    B, T = cfg["train"]["batch_size"], cfg["model"]["seq_len"]

    def step(t: int) -> None:
        x, y = train_batch(corpus, B, T, cfg["seed"], t)
        _, (loss, _), _ = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        loss.item()

    return step


def rlrs_loop(cfg: dict, out_dir: str):
    trainer = Trainer(cfg, out_dir, executor=None, job_id=None)

    def step(t: int) -> None:
        scalars, update = trainer.train_step(t)
        trainer.record(t, scalars, update, None)

    return step


def rate(step, start: int, n: int) -> float:
    t0 = time.perf_counter()
    for t in range(start, start + n):
        step(t)
    return n / (time.perf_counter() - t0)


def measure(name: str, model: dict, threads: int, steps: int, rounds: int) -> dict:
    cfg = config(model, threads)
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        bare, ours = bare_loop(cfg), rlrs_loop(cfg, tmp)
        for s in (bare, ours):  # warm-up
            rate(s, 0, 5)
        best = {"bare": 0.0, "rlrs": 0.0}
        for r in range(rounds):
            order = (("bare", bare), ("rlrs", ours)) if r % 2 == 0 else (("rlrs", ours), ("bare", bare))
            for key, s in order:
                best[key] = max(best[key], rate(s, 10 + r * steps, steps))
    return {
        "case": name,
        "threads": threads,
        "bare_steps_per_s": round(best["bare"], 3),
        "rlrs_steps_per_s": round(best["rlrs"], 3),
        "overhead": round(best["bare"] / best["rlrs"] - 1, 4),
    }


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=30, help="steps per timed block")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cases", nargs="*", default=list(CASES))
    a = p.parse_args(argv)
    results = []
    for name in a.cases:
        r = measure(name, CASES[name], a.threads, a.steps, a.rounds)
        print(json.dumps(r), flush=True)
        results.append(r)
    out = {"benchmark": "trainer_overhead", "goal": "overhead < 0.03", "results": results,
           "max_overhead": max(r["overhead"] for r in results)}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
