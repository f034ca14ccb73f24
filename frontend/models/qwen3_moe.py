"""Qwen3-MoE: Qwen3 whose MLP is, on most layers, a top-k mixture of SwiGLU experts."""

from __future__ import annotations

from typing import Any

from ...errors import CheckpointError
from ...ir.graph import Value
from ...ir.ops import MoEExperts, MoERoute
from . import llama, qwen3
from .decoder import Layers
from .spec import Architecture, ConfigFields

WEIGHT_NAMES: dict[str, str | tuple[str, ...]] = {
    **qwen3.WEIGHT_NAMES,
    "model.layers.{i}.mlp.gate.weight": "layers.{i}.moe.router.weight",
    # transformers 4.x: one tensor per expert, stacked on load.
    "model.layers.{i}.mlp.experts.{e}.gate_proj.weight": "layers.{i}.moe.gate.weight",
    "model.layers.{i}.mlp.experts.{e}.up_proj.weight": "layers.{i}.moe.up.weight",
    "model.layers.{i}.mlp.experts.{e}.down_proj.weight": "layers.{i}.moe.down.weight",
    # transformers 5.x: experts already stacked, gate and up fused (gate rows first).
    "model.layers.{i}.mlp.experts.gate_up_proj": (
        "layers.{i}.moe.gate.weight",
        "layers.{i}.moe.up.weight",
    ),
    "model.layers.{i}.mlp.experts.down_proj": "layers.{i}.moe.down.weight",
}


def moe_layers(fields: ConfigFields) -> tuple[int, ...]:
    """Sparse layers by transformers' rule: not in mlp_only_layers and (i + 1) % step == 0."""
    step = fields.get("decoder_sparse_step", int, 1)
    if step < 1:
        raise CheckpointError(f"{fields.source}: decoder_sparse_step must be >= 1, got {step}")
    dense = set(fields.get("mlp_only_layers", list, []))
    num_layers = fields.require("num_hidden_layers")
    return tuple(i for i in range(num_layers) if i not in dense and (i + 1) % step == 0)


def config_fields(fields: ConfigFields) -> dict[str, Any]:
    llama.refuse_biases(fields)
    num_experts = fields.get("num_experts", int) or fields.get("num_local_experts", int)
    if not num_experts:
        raise CheckpointError(
            f"{fields.source}: required field 'num_experts' (or 'num_local_experts') is missing"
        )
    top_k = fields.require("num_experts_per_tok")
    if not 0 < top_k <= num_experts:
        raise CheckpointError(
            f"{fields.source}: num_experts_per_tok={top_k} must be in 1..{num_experts}"
        )
    window = fields.get("sliding_window", int)
    return {
        "qk_norm": True,
        # Qwen3-MoE slides every layer when use_sliding_window is set.
        "sliding_window": window if fields.get("use_sliding_window", bool, False) else None,
        "num_experts": num_experts,
        "num_experts_per_tok": top_k,
        "moe_intermediate_size": fields.require("moe_intermediate_size"),
        "norm_topk_prob": fields.get("norm_topk_prob", bool, False),
        "moe_layers": moe_layers(fields),
    }


def sparse_mlp(L: Layers, i: int, x: Value) -> Value:
    """Route each token of x[T, C] to its top-k experts and sum their SwiGLU outputs."""
    c, p = L.c, f"layers.{i}.moe"
    e, inter, h = c.num_experts, c.moe_intermediate_size, c.hidden_size
    logits = L.linear(x, f"{p}.router", e, h)  # logits: [T, E]
    route = MoERoute(top_k=c.num_experts_per_tok, normalize=c.norm_topk_prob)
    weights, ids = L.b.emit(route, logits)  # type: ignore[misc]  # weights, ids: [T, k]
    gate = L.weight(f"{p}.gate.weight", e, inter, h)  # gate, up: [E, I, C]
    up = L.weight(f"{p}.up.weight", e, inter, h)
    down = L.weight(f"{p}.down.weight", e, h, inter)  # down: [E, C, I]
    return L.op(MoEExperts(), x, weights, ids, gate, up, down)


ARCH = Architecture(
    "qwen3_moe",
    WEIGHT_NAMES,
    config_fields,
    sparse_mlp=sparse_mlp,
    defaults={"max_position_embeddings": 32768},
)
