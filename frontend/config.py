"""The architecture description every frontend produces: what the graph builder needs, nothing else.

Weights in the graph use ferrumc's own names, the same for every checkpoint format:
  embed.weight [V, C]             norm.weight [C]              lm_head.weight [V, C] (absent if tied)
  layers.{i}.attn_norm.weight [C]                              layers.{i}.mlp_norm.weight [C]
  layers.{i}.attn.{q,k,v}.weight [H*D, C]  (.bias [H*D] when attention_bias)
  layers.{i}.attn.o.weight [C, Hq*D]       layers.{i}.attn.{q,k}_norm.weight [D] (qk_norm)
  layers.{i}.mlp.{gate,up}.weight [I, C]   layers.{i}.mlp.down.weight [C, I]
  layers.{i}.moe.router.weight [E, C]      layers.{i}.moe.{gate,up}.weight [E, I, C]
  layers.{i}.moe.down.weight [E, C, I]     (experts stacked on the first axis)
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..ir.rope import RopeScaling
from ..ir.types import DType


@dataclass(frozen=True)
class DecoderConfig:
    """A decoder-only transformer (Llama family) with the variations ferrumc supports."""

    model_type: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    partial_rotary_factor: float = 1.0
    max_position_embeddings: int = 4096
    tie_word_embeddings: bool = False
    hidden_act: str = "silu"
    attention_bias: bool = False  # qwen2: biases on q, k, v
    qk_norm: bool = False  # qwen3: RMSNorm over head_dim on q and k before rotary
    sliding_window: int | None = None  # mistral
    # Mixture of experts (qwen3_moe); moe_layers lists the layers whose MLP is sparse.
    num_experts: int = 0
    num_experts_per_tok: int = 0
    moe_intermediate_size: int = 0
    norm_topk_prob: bool = True
    moe_layers: tuple[int, ...] = field(default_factory=tuple)
    # The dtype the checkpoint stores its float weights in.
    weight_dtype: DType = DType.f32

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.partial_rotary_factor)

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0
