"""Tiny run configs for tests: real training on the real corpus, seconds each."""

import copy

TINY = {
    "seed": 0,
    "model": {"seq_len": 32, "d_model": 32, "n_layers": 2, "n_heads": 2, "d_ff": 64},
    "optim": {"lr": 0.003},
    "schedule": {"warmup_steps": 2},
    "data": {"corpus": "austen", "eval_tokens": 4096},
    "train": {"steps": 40, "batch_size": 8, "eval_interval": 20, "checkpoint_interval": 10, "threads": 1},
}

MOE = {"n_experts": 4, "top_k": 1, "granularity": 1, "capacity_factor": 1.0}


def tiny(moe: bool = False, **overrides) -> dict:
    """A tiny run config; overrides are `block.key=value` pairs with dots as `__`."""
    cfg = copy.deepcopy(TINY)
    if moe:
        cfg["model"]["moe"] = dict(MOE)
    for path, value in overrides.items():
        *blocks, key = path.split("__")
        node = cfg
        for b in blocks:
            node = node.setdefault(b, {})
        node[key] = value
    return cfg
