"""Decoder-only Transformer, dense or Mixture-of-Experts, in one file.

Pre-LayerNorm blocks, learned absolute positions, untied output head, no
biases, SwiGLU feed-forward. The MoE feed-forward is token-choice: a softmax
router picks top-k experts per token, each expert takes at most `capacity`
tokens (the rest are dropped and pass through the residual only), and the
layer adds a load-balancing loss and a router z-loss.

Every module that owns parameters declares the RLRS component it belongs to
(`component = "..."`); rlrs.components reads that to build the optimizer's
parameter groups, so the grouping follows module roles, not parameter names.
Each also declares the weight role of each of its parameters (`roles`, name
-> role); rlrs.parametrization's table maps a role to its init, lr and
weight-decay factors and its forward multiplier (all neutral under the
standard parametrization, muP's under `parametrization="mup"`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from rlrs.components import component_of_parameters
from rlrs.config import DEFAULTS, MOE_DEFAULTS
from rlrs.parametrization import forward_multiplier, init_factor


@dataclass(frozen=True)
class MoEConfig:
    n_experts: int  # before granularity
    top_k: int  # before granularity
    granularity: int  # G: G*n_experts experts, each d_ff/G wide, top_k*G chosen
    capacity_factor: float
    load_balance_weight: float
    z_loss_weight: float

    @property
    def experts_total(self) -> int:
        return self.n_experts * self.granularity

    @property
    def k_total(self) -> int:
        return self.top_k * self.granularity


# The fields, their meaning and their defaults are rlrs.config's (the one home).
@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int
    seq_len: int
    d_model: int
    n_layers: int
    n_heads: int
    d_ff: int  # dense hidden width; MoE: one expert's width before granularity
    init_scale: float  # init std = sqrt(init_scale / fan_in)
    moe: MoEConfig | None
    # Parametrization (rlrs.parametrization): sp, or muP relative to a model
    # base_d_model wide, with its forward multipliers.
    parametrization: str
    base_d_model: int | None
    alpha_in: float  # embedding output multiplier
    alpha_out: float  # head logits multiplier (times 1 / m)
    attention_mult: float | None  # attention logits scale mult / d_head
    router_parametrization: str  # mup: router logits times 1 / m

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        """From a `model:` block (resolved by rlrs.config, or partial: keys left out take its defaults)."""
        d = {**DEFAULTS["model"], **d}
        moe = d.get("moe")
        return cls(**{**d, "moe": MoEConfig(**{**MOE_DEFAULTS, **moe}) if moe else None})

    def to_dict(self) -> dict:
        return asdict(self)

    def init_scale_of(self, role: str) -> float:
        """init_scale for a weight of this role (init_scale itself under sp)."""
        return self.init_scale * init_factor(self, role)


def _init(w: torch.Tensor, init_scale: float, fan_in: int) -> None:
    # Truncated normal at +-2 std, as the paper's code; std shrinks with fan-in.
    std = math.sqrt(init_scale / fan_in)
    nn.init.trunc_normal_(w, mean=0.0, std=std, a=-2 * std, b=2 * std)


class Embedding(nn.Module):
    component = "embedding"
    roles = {"tok": "embedding_token", "pos": "embedding_position"}

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.tok = nn.Parameter(torch.empty(cfg.vocab_size, cfg.d_model))
        self.pos = nn.Parameter(torch.empty(cfg.seq_len, cfg.d_model))
        # An embedding row is read, not multiplied: use d_model as its fan-in so
        # its scale matches the activations the first block expects.
        _init(self.tok, cfg.init_scale_of("embedding_token"), cfg.d_model)
        _init(self.pos, cfg.init_scale_of("embedding_position"), cfg.d_model)
        self.mult = forward_multiplier(cfg, "embedding_token")  # alpha_in under muP

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.tok[idx] + self.pos[: idx.shape[1]]
        return x if self.mult is None else x * self.mult


class Norm(nn.LayerNorm):
    component = "norm"
    roles = {"weight": "norm"}

    def __init__(self, d: int):
        super().__init__(d, bias=False)


class Linear(nn.Linear):
    """Bias-free linear layer with the paper's init; `component` is set by the owner."""

    def __init__(self, d_in: int, d_out: int, cfg: ModelConfig, role: str):
        super().__init__(d_in, d_out, bias=False)
        self.roles = {"weight": role}
        _init(self.weight, cfg.init_scale_of(role), d_in)


class Attention(nn.Module):
    component = "attention"

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        assert cfg.d_model % cfg.n_heads == 0
        self.n_heads = cfg.n_heads
        self.qkv = Linear(cfg.d_model, 3 * cfg.d_model, cfg, "attention_qkv")
        self.proj = Linear(cfg.d_model, cfg.d_model, cfg, "attention_out")
        self.scale = forward_multiplier(cfg, "attention_qkv")  # None: 1 / sqrt(d_head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_heads, D // self.n_heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale)
        return self.proj(y.transpose(1, 2).reshape(B, T, D))


class SwiGLU(nn.Module):
    component = "ffn"

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate = Linear(cfg.d_model, cfg.d_ff, cfg, "ffn_in")
        self.up = Linear(cfg.d_model, cfg.d_ff, cfg, "ffn_in")
        self.down = Linear(cfg.d_ff, cfg.d_model, cfg, "ffn_out")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
        return self.down(F.silu(self.gate(x)) * self.up(x)), {}


class Router(nn.Module):
    component = "router"
    roles = {"weight": "router"}

    def __init__(self, d_model: int, n_experts: int, init_scale: float, mult: float | None = None):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_experts, d_model))
        _init(self.weight, init_scale, d_model)
        self.mult = mult  # 1 / m under muP with router: mup

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # fp32 even under bf16 autocast: bf16 logits (3 significant digits)
        # would flip near-tied routing decisions and blur the z-loss.
        with torch.autocast(x.device.type, enabled=False):
            logits = x.float() @ self.weight.float().t()
            return logits if self.mult is None else logits * self.mult


class Experts(nn.Module):
    """All experts' SwiGLU weights stacked, so one batched matmul serves them all."""

    component = "experts"
    roles = {"gate": "experts_in", "up": "experts_in", "down": "experts_out"}

    def __init__(self, n: int, d_model: int, width: int, init_scale: float, init_scale_out: float):
        super().__init__()
        self.gate = nn.Parameter(torch.empty(n, d_model, width))
        self.up = nn.Parameter(torch.empty(n, d_model, width))
        self.down = nn.Parameter(torch.empty(n, width, d_model))
        for w, scale, fan_in in (
            (self.gate, init_scale, d_model),
            (self.up, init_scale, d_model),
            (self.down, init_scale_out, width),
        ):
            _init(w, scale, fan_in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [n, capacity, d] -> [n, capacity, d]
        return torch.bmm(F.silu(torch.bmm(x, self.gate)) * torch.bmm(x, self.up), self.down)


class MoE(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        m = cfg.moe
        assert m is not None and cfg.d_ff % m.granularity == 0
        self.m = m
        self.router = Router(
            cfg.d_model, m.experts_total, cfg.init_scale_of("router"), forward_multiplier(cfg, "router")
        )
        self.experts = Experts(
            m.experts_total,
            cfg.d_model,
            cfg.d_ff // m.granularity,
            cfg.init_scale_of("experts_in"),
            cfg.init_scale_of("experts_out"),
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
        B, T, D = x.shape
        E, k = self.m.experts_total, self.m.k_total
        flat = x.reshape(-1, D)
        N = flat.shape[0]
        logits = self.router(flat)  # fp32, also under autocast
        probs = logits.softmax(dim=-1)
        gate, choice = probs.topk(k, dim=-1)  # [N, k]
        slot_token, slot_weight, counts, kept = self._slots(choice, gate, N)
        capacity = slot_token.numel() // E

        # Dispatch is one gather and combine one scatter-add, both through the
        # slot -> token map: no zero-filled buffer, no per-assignment copies.
        # An empty slot reads token 0 and is computed for nothing; its weight
        # is exactly 0, so it adds 0 to token 0's output and sends no gradient
        # to the experts or to the input (only finite activations reach it).
        # Combined in the experts' output dtype (bf16 under autocast, like a
        # dense layer's output); the residual add promotes it back.
        out = self.experts(flat.index_select(0, slot_token).view(E, capacity, D)).view(E * capacity, D)
        y = out.new_zeros(N, D).index_add(0, slot_token, out * slot_weight.unsqueeze(1).to(out.dtype))

        # Switch-style balance: E * sum_e (share of assignments to e) * (mean prob of e).
        share = counts.float() / (N * k)
        load_balance = E * torch.sum(share * probs.mean(dim=0))
        z_loss = torch.logsumexp(logits, dim=-1).pow(2).mean()
        dropped = 1.0 - kept.float().mean()
        return y.view(B, T, D), {"lb_loss": load_balance, "z_loss": z_loss, "dropped_frac": dropped}

    def _slots(self, choice: torch.Tensor, gate: torch.Tensor, N: int):
        """Capacity assignment. Returns, per expert slot (E * capacity of
        them, expert-major), the token it holds (0 when empty) and its gate
        weight (0 when empty, differentiable), plus the assignment count of
        each expert and which assignments (in expert order) were kept."""
        E, k = self.m.experts_total, self.m.k_total
        capacity = math.ceil(self.m.capacity_factor * N * k / E)
        # Assignment order: every token's first choice before any second choice,
        # tokens in sequence order within a rank, so capacity drops the
        # lowest-priority assignments first. Assignment a is token a % N.
        expert = choice.t().reshape(-1)
        weight = gate.t().reshape(-1)
        # Sort assignments by expert (stable keeps the priority order) and give
        # each its position within its expert; positions past capacity are dropped.
        # Every shape here is fixed by (N, k, E): no boolean indexing and no
        # bincount, so nothing waits on data and torch.compile sees one graph.
        order = torch.argsort(expert, stable=True)
        counts = torch.zeros(E, dtype=torch.long, device=choice.device).scatter_add_(0, expert, torch.ones_like(expert))
        first = torch.cumsum(counts, 0) - counts
        expert_sorted = expert[order]
        pos = torch.arange(N * k, device=choice.device) - first[expert_sorted]
        kept = pos < capacity
        # A dropped assignment writes to one spare slot past the end, cut off
        # after: it holds no token, and its gate weight gets no gradient.
        spare = E * capacity
        slot = torch.where(kept, expert_sorted * capacity + pos, spare)
        slot_token = torch.zeros(spare + 1, dtype=torch.long, device=choice.device).index_put_((slot,), order % N)[
            :spare
        ]
        slot_weight = weight.new_zeros(spare + 1).index_put((slot,), weight[order])[:spare]
        return slot_token, slot_weight, counts, kept


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.norm1 = Norm(cfg.d_model)
        self.attn = Attention(cfg)
        self.norm2 = Norm(cfg.d_model)
        self.ffn = MoE(cfg) if cfg.moe else SwiGLU(cfg)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
        x = x + self.attn(self.norm1(x))
        h, aux = self.ffn(self.norm2(x))
        return x + h, aux


class Head(Linear):
    component = "head"

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg.d_model, cfg.vocab_size, cfg, "head")
        self.mult = forward_multiplier(cfg, "head")  # alpha_out / m under muP

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = super().forward(x)
        return logits if self.mult is None else logits * self.mult


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = Embedding(cfg)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = Norm(cfg.d_model)
        self.head = Head(cfg)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        """Returns (logits, loss, aux). loss = cross-entropy + weighted aux
        losses; aux holds the unweighted MoE losses averaged over layers."""
        x = self.embed(idx)
        aux_sum: dict[str, torch.Tensor] = {}
        for block in self.blocks:
            x, aux = block(x)
            for name, v in aux.items():
                aux_sum[name] = aux_sum.get(name, 0.0) + v
        logits = self.head(self.norm(x))
        aux = {name: v / self.cfg.n_layers for name, v in aux_sum.items()}
        if targets is None:
            return logits, None, aux
        ce = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1))
        loss = ce
        if self.cfg.moe:
            loss = ce + self.cfg.moe.load_balance_weight * aux["lb_loss"] + self.cfg.moe.z_loss_weight * aux["z_loss"]
        return logits, (loss, ce), aux


# ---------------------------------------------------------------- accounting


def param_counts(cfg: ModelConfig | dict) -> dict:
    """Total, active-per-token and non-embedding parameter counts, and the
    count per component. Built on the meta device: no memory, no init cost."""
    if isinstance(cfg, dict):
        cfg = ModelConfig.from_dict(cfg)
    with torch.device("meta"):
        model = GPT(cfg)
    by_comp: dict[str, int] = {}
    for comp, params in component_of_parameters(model).items():
        by_comp[comp] = sum(p.numel() for p in params)
    total = sum(by_comp.values())
    # Only top_k of the experts run per token; everything else always runs.
    inactive = 0
    if cfg.moe:
        inactive = round(by_comp.get("experts", 0) * (1 - cfg.moe.k_total / cfg.moe.experts_total))
    embedding_like = by_comp.get("embedding", 0) + by_comp.get("head", 0)
    return {
        "params_total": total,
        "params_active": total - inactive,
        "params_nonembedding": total - embedding_like,
        "params_active_nonembedding": total - embedding_like - inactive,
        "params_by_component": by_comp,
    }


def train_flops_per_token(cfg: ModelConfig | dict) -> float:
    """Forward + backward FLOPs per token: 6 per active matmul weight (the
    head included, the embedding lookup excluded) plus attention's score and
    value products, 12 * layers * d_model * seq_len (the PaLM appendix count)."""
    if isinstance(cfg, dict):
        cfg = ModelConfig.from_dict(cfg)
    counts = param_counts(cfg)
    matmul_params = counts["params_active_nonembedding"] + counts["params_by_component"].get("head", 0)
    return 6.0 * matmul_params + 12.0 * cfg.n_layers * cfg.d_model * cfg.seq_len
