"""The architecture registry and the decoder graphs it builds for every tiny model."""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from pathlib import Path

import pytest

from ferrumc.errors import UnsupportedModel
from ferrumc.frontend.hf_config import parse_hf_config
from ferrumc.frontend.models import ARCHITECTURES, architecture, build_graph, supported
from ferrumc.ir import parse_graph, print_graph, verify
from ferrumc.ir.ops import Cast, Linear, Weight
from ferrumc.ir.types import DType
from ferrumc.tests.tiny_checkpoints import TINY_MODELS, model_config

# The weight names frontend/config.py documents, as regexes.
DOCUMENTED = re.compile(
    r"embed\.weight|norm\.weight|lm_head\.weight"
    r"|layers\.\d+\.(attn_norm|mlp_norm)\.weight"
    r"|layers\.\d+\.attn\.[qkv]\.(weight|bias)|layers\.\d+\.attn\.o\.weight"
    r"|layers\.\d+\.attn\.[qk]_norm\.weight"
    r"|layers\.\d+\.mlp\.(gate|up|down)\.weight"
    r"|layers\.\d+\.moe\.(router|gate|up|down)\.weight"
)

# Op counts of the f32 graph of each 2-layer tiny model.
DENSE = {
    "input": 2,
    "embedding": 1,
    "rms_norm": 5,
    "linear": 15,
    "reshape": 8,
    "rotary": 4,
    "attention": 2,
    "add": 4,
    "silu": 2,
    "mul": 2,
}
EXPECTED_OPS = {
    "llama": {**DENSE, "weight": 20},  # tied: no lm_head
    "llama_linear": {**DENSE, "weight": 21},
    "mistral": {**DENSE, "weight": 21},
    "qwen2": {**DENSE, "weight": 26},  # tied, + q/k/v biases
    "qwen3": {**DENSE, "weight": 25, "rms_norm": 9},  # + q/k norms
    "qwen3_moe": {
        **DENSE,
        "weight": 26,
        "rms_norm": 9,
        "linear": 13,  # layer 0: router instead of gate/up/down
        "silu": 1,
        "mul": 1,
        "moe_route": 1,
        "moe_experts": 1,
    },
}


def config(name: str, dtype: str = "f32"):
    return parse_hf_config(model_config(name, dtype), Path(f"{name}/config.json"))


def test_registry() -> None:
    assert supported() == ["llama", "mistral", "qwen2", "qwen3", "qwen3_moe"]
    assert all(key == arch.model_type for key, arch in ARCHITECTURES.items())
    with pytest.raises(UnsupportedModel, match="'phi3' is not supported; supported: llama, mis"):
        architecture("phi3")


@pytest.mark.parametrize("arch", list(ARCHITECTURES.values()), ids=list(ARCHITECTURES))
def test_weight_tables_use_documented_names(arch) -> None:
    for hf, ours in arch.weight_names.items():
        for target in (ours,) if isinstance(ours, str) else ours:
            assert DOCUMENTED.fullmatch(target.format(i=3)), f"{hf} -> {target}"


@pytest.mark.parametrize("name", list(TINY_MODELS))
def test_graph_verifies_prints_and_counts(name: str) -> None:
    graph = verify(build_graph(config(name)))
    text = print_graph(graph)
    assert text.startswith("graph forward(%tokens: i32[seq], %positions: i32[seq]) {")
    assert print_graph(parse_graph(text)) == text
    assert dict(Counter(n.op.opname for n in graph.nodes)) == EXPECTED_OPS[name]
    assert str(graph.outputs["logits"].type) == "f32[seq,256]"
    assert all(DOCUMENTED.fullmatch(w) for w in graph.weight_types())


@pytest.mark.parametrize("name", ["llama", "qwen3_moe"])
def test_low_precision_weights_are_cast_once(name: str) -> None:
    graph = build_graph(config(name, "bf16"))
    weights = [n for n in graph.nodes if isinstance(n.op, Weight)]
    assert all(n.op.type.dtype is DType.bf16 for n in weights)
    users = graph.users()
    for w in weights:
        assert [type(u.op) for u in users[w.out]] == [Cast], w.op.name
    assert graph.count(Cast) == len(weights)
    assert build_graph(config(name)).count(Cast) == 0


def test_qkv_are_separate_linears_of_one_normed_value() -> None:
    graph = build_graph(config("qwen2"))
    users = graph.users()
    norm = next(n for n in graph.nodes if n.op.opname == "rms_norm")
    linears = [u for u in users[norm.out] if isinstance(u.op, Linear)]
    assert [u.op.has_bias for u in linears] == [True, True, True]
    names = [u.inputs[1].node.op.name for u in linears]
    assert names == [f"layers.0.attn.{p}.weight" for p in "qkv"]


def test_attention_attributes() -> None:
    graph = build_graph(config("mistral"))
    attn = next(n.op for n in graph.nodes if n.op.opname == "attention")
    assert (attn.num_heads, attn.num_kv_heads, attn.scale, attn.sliding_window) == (4, 2, 0.25, 8)
    rope = next(n.op for n in build_graph(config("qwen2")).nodes if n.op.opname == "rotary")
    assert rope.theta == 1e6 and rope.rotary_dim == 16 and rope.scaling.kind == "yarn"


def test_tied_head_reads_the_embedding() -> None:
    graph = build_graph(config("llama"))
    head = graph.outputs["logits"].node
    assert head.inputs[1].node.op.name == "embed.weight"


def test_refusals() -> None:
    with pytest.raises(UnsupportedModel, match="hidden_act 'gelu' is not supported; valid: silu"):
        build_graph(dataclasses.replace(config("llama"), hidden_act="gelu"))
    with pytest.raises(UnsupportedModel, match="model_type 'gpt2' is not supported"):
        build_graph(dataclasses.replace(config("llama"), model_type="gpt2"))
    moe_llama = dataclasses.replace(config("llama"), num_experts=4, moe_layers=(0,))
    with pytest.raises(UnsupportedModel, match="llama has MoE layers but no sparse MLP"):
        build_graph(moe_llama)
