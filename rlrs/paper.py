"""The paper's tuned settings (arXiv 2507.03526; spec section 3), for the
report's comparison with what a study's search found."""

from __future__ import annotations

# Start / end multipliers per component, per model family.
PAPER_MULTIPLIERS = {
    "moe": {
        "embedding": {"start": 5.0, "end": 0.666},
        "head": {"start": 0.666, "end": 0.444},
        "router": {"start": 0.666, "end": 1.0},
        "experts": {"start": 0.3, "end": 1.125},
        "attention": {"start": 1.0, "end": 1.0},
    },
    "dense": {
        "embedding": {"start": 5.0, "end": 0.667},
        "head": {"start": 1.0, "end": 0.444},
        "ffn": {"start": 1.0, "end": 0.667},
        "attention": {"start": 1.0, "end": 0.2},
    },
}
# The global settings; the paper gives them for its MoE configs only.
PAPER_GLOBALS = {"moe": {"lr": 3e-3, "final_lr_fraction": 0.0444, "weight_decay": 0.1, "init_scale": 0.15}}
