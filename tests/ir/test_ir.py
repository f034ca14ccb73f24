"""The IR core: printer/parser round trip over every op, verifier messages, reshape dims."""

from __future__ import annotations

import re

import pytest

from ferrumc.errors import ParseError, VerifyError
from ferrumc.ir import (
    OPS,
    Graph,
    GraphBuilder,
    Module,
    RopeScaling,
    parse_graph,
    parse_module,
    print_graph,
    print_module,
    verify,
    verify_module,
)
from ferrumc.ir import ops as O
from ferrumc.ir.graph import Node
from ferrumc.ir.types import DType, KVCacheType, TensorType, reshape_dims

F32, I32 = DType.f32, DType.i32


def every_op_graph() -> Graph:
    """A small graph that uses every op at least once."""
    b = GraphBuilder("all_ops")
    tokens = b.input("tokens", TensorType(I32, ("seq",)))
    positions = b.input("positions", TensorType(I32, ("seq",)))
    cache = b.input("kv_cache", KVCacheType(2, 1, 4, F32))
    x = b.emit(O.Embedding(), b.weight("embed.weight", F32, (16, 8)), tokens)
    x4 = b.emit(
        O.Int4Embedding(group_size=4, has_zeros=True),
        b.weight("embed4.qweight", DType.u4, (16, 8)),
        b.weight("embed4.scales", DType.f16, (16, 2)),
        b.weight("embed4.zeros", F32, (16, 2)),
        tokens,
    )
    x = b.emit(O.Add(), x, x4)
    h = b.emit(O.RMSNorm(eps=1e-5), x, b.weight("norm.weight", F32, (8,)))
    q = b.emit(
        O.Linear(has_bias=True), h, b.weight("q.weight", F32, (8, 8)), b.weight("q.bias", F32, (8,))
    )
    kv = b.emit(
        O.Int4Linear(group_size=4, has_zeros=True, has_perm=True, has_bias=True),
        h,
        b.weight("kv.qweight", DType.u4, (8, 8)),
        b.weight("kv.scales", DType.f16, (8, 2)),
        b.weight("kv.zeros", F32, (8, 2)),
        b.weight("kv.perm", I32, (8,)),
        b.weight("kv.bias", F32, (8,)),
    )
    k, v = b.emit(O.Split(axis=-1, sizes=(4, 4)), kv)
    # Weight-only quantization feeding an int4 linear (asymmetric: three outputs).
    wq = b.emit(O.QuantizeInt4(group_size=4, symmetric=False), b.weight("w.weight", F32, (8, 8)))
    k8 = b.emit(O.Int4Linear(group_size=4, has_zeros=True), h, *wq)
    k = b.emit(O.Add(), k, b.emit(O.Split(axis=-1, sizes=(4, 4)), k8)[0])
    q = b.emit(O.Reshape(shape=(-1, 2, 4)), q)
    k, v = (b.emit(O.Reshape(shape=("seq", 1, 4)), t) for t in (k, v))
    yarn = RopeScaling("yarn", factor=4.0, original_max_position_embeddings=64)
    q = b.emit(O.Rotary(theta=1e4, rotary_dim=4, scaling=yarn), q, positions)
    a = b.emit(O.Attention(num_heads=2, num_kv_heads=1, scale=0.5, sliding_window=3), q, k, v)
    p = b.emit(O.PagedAttention(layer=1, num_heads=2, num_kv_heads=1, scale=0.5), q, k, v, cache)
    s = b.emit(O.Reshape(shape=(-1, 8)), b.emit(O.Add(), a, p))
    s = b.emit(O.Mul(), b.emit(O.SiLU(), s), b.emit(O.GELU(approximate="tanh"), s))
    s, _ = b.emit(O.AddRMSNorm(), s, x, b.weight("norm.weight", F32, (8,)))
    s = b.emit(O.Softmax(axis=0), s)
    weights, ids = b.emit(
        O.MoERoute(top_k=2, normalize=False),
        b.emit(O.Transpose(perm=(1, 0)), b.emit(O.Transpose(perm=(1, 0)), s)),
    )
    e = b.emit(
        O.MoEExperts(),
        s,
        weights,
        ids,
        b.weight("moe.gate", F32, (8, 3, 8)),
        b.weight("moe.up", F32, (8, 3, 8)),
        b.weight("moe.down", F32, (8, 8, 3)),
    )
    e = b.emit(
        O.MoEExperts(fused_gate_up=True),
        e,
        weights,
        ids,
        b.weight("moe.gate_up", F32, (8, 6, 8)),
        b.weight("moe.down", F32, (8, 8, 3)),
    )
    c = b.emit(O.Concat(axis=-1), e, b.emit(O.Cast(dtype=F32), b.emit(O.Cast(dtype=DType.bf16), e)))
    return verify(b.build({"logits": c, "ids": ids}))


def test_every_op_prints_and_parses_back_to_the_same_text() -> None:
    graph = every_op_graph()
    used = {node.op.opname for node in graph.nodes}
    assert used == set(OPS), f"not exercised: {set(OPS) - used}"
    text = print_graph(graph)
    again = verify(parse_graph(text))
    assert print_graph(again) == text
    assert [n.types for n in again.nodes] == [n.types for n in graph.nodes]
    assert [n.op for n in again.nodes] == [n.op for n in graph.nodes]


def test_modules_round_trip_and_check_shared_weights() -> None:
    first = every_op_graph()
    second = GraphBuilder("second")
    w = second.weight("embed.weight", F32, (16, 8))
    module = Module({"all_ops": first, "second": second.build({"w": w})})
    text = print_module(module)
    assert print_module(verify_module(parse_module(text))) == text
    clash = GraphBuilder("clash")
    module.graphs["clash"] = clash.build({"w": clash.weight("embed.weight", F32, (16, 4))})
    with pytest.raises(
        VerifyError,
        match=r"weight 'embed.weight' has type f32\[16,8\] in one graph and f32\[16,4\] in clash",
    ):
        verify_module(module)


def test_parse_errors_name_the_line() -> None:
    header = "graph g(%x: f32[2]) {\n"
    with pytest.raises(
        ParseError, match="line 2: unknown op 'frobnicate'; known: add, add_rms_norm"
    ):
        parse_graph(header + "  %0 = frobnicate(%x) : f32[2]\n  return y=%0\n}\n")
    with pytest.raises(ParseError, match=r"line 2: declared f16\[2\] but silu infers f32\[2\]"):
        parse_graph(header + "  %0 = silu(%x) : f16[2]\n  return y=%0\n}\n")
    with pytest.raises(ParseError, match="line 2: undefined value %nope"):
        parse_graph(header + "  %0 = silu(%nope) : f32[2]\n  return y=%0\n}\n")
    with pytest.raises(ParseError, match="missing 'return'"):
        parse_graph(header + "  %0 = silu(%x) : f32[2]\n}\n")


# --- the verifier --------------------------------------------------------------------------------


def verify_error(graph: Graph) -> str:
    with pytest.raises(VerifyError) as info:
        verify(graph)
    return str(info.value)


def assert_marked(text: str, message: str, line: str | None) -> None:
    """`text` starts with the message; the `^` line sits under the one that contains `line`."""
    first, *rest = text.splitlines()
    assert first.startswith("graph ") and message in first, first
    carets = [i for i, ln in enumerate(rest) if ln.lstrip().startswith("^")]
    if line is None:
        assert carets == [], text
        return
    assert len(carets) == 1, text
    above, caret = rest[carets[0] - 1].strip(), rest[carets[0]].strip()
    assert line in above, text
    assert caret == "^" * len(above) + " error: " + first.split(": ", 1)[1], text


def small_graph() -> Graph:
    b = GraphBuilder("small")
    x = b.input("x", TensorType(F32, (2, 4)))
    h = b.emit(O.Linear(), x, b.weight("w", F32, (3, 4)))
    return b.build({"y": b.emit(O.SiLU(), h)})


def test_reading_a_value_before_its_definition() -> None:
    g = small_graph()
    g.nodes[-2], g.nodes[-1] = g.nodes[-1], g.nodes[-2]  # silu now comes before the linear it reads
    text = verify_error(g)
    assert_marked(
        text, "silu reads a value defined later or not in this graph", "= silu(%<undefined>)"
    )


def test_reading_a_value_of_another_graph() -> None:
    g, other = small_graph(), small_graph()
    g.nodes[-1].inputs = (other.nodes[-2].out,)
    assert_marked(
        verify_error(g), "silu reads a value defined later or not in this graph", "= silu("
    )


@pytest.mark.parametrize(
    ("source", "message", "line"),
    [
        (O.Input("x", TensorType(F32, (2, 4))), "input 'x' is declared twice", "%x = input"),
        (
            O.Weight("w", TensorType(F32, (3, 4))),
            "weight 'w' is declared twice",
            "%w = weight : f32[3,4]",
        ),
    ],
)
def test_duplicate_sources(source: O.Input | O.Weight, message: str, line: str) -> None:
    g = small_graph()
    g.nodes.append(Node(source, (), (source.type,)))
    assert_marked(verify_error(g), message, line)


def test_stored_types_must_match_inferred() -> None:
    g = small_graph()
    g.nodes[-1].types = (TensorType(DType.f16, (2, 3)),)
    assert_marked(verify_error(g), "stored types f16[2,3] differ from inferred f32[2,3]", "= silu(")


def test_outputs_must_exist_and_be_defined() -> None:
    g = small_graph()
    g.outputs = {}
    assert_marked(verify_error(g), "graph small: graph has no outputs", None)
    g.outputs = {"y": small_graph().nodes[-1].out}
    assert_marked(verify_error(g), "output 'y' is not defined in the graph", None)


def test_builder_errors_name_the_op_and_its_argument_types() -> None:
    b = GraphBuilder("g")
    x = b.input("x", TensorType(F32, (2, 4)))
    with pytest.raises(
        VerifyError, match=r"^linear\(f32\[2,4\], f32\[3,5\]\): x f32\[2,4\] and weight"
    ):
        b.emit(O.Linear(), x, b.weight("w", F32, (3, 5)))
    with pytest.raises(
        VerifyError, match=r"input 'x' declared twice with types f32\[2,4\] and f32\[2\]"
    ):
        b.input("x", TensorType(F32, (2,)))


T = TensorType
CACHE = KVCacheType(2, 1, 8, F32)
QKV = [T(F32, (3, 2, 8)), T(F32, (3, 1, 8)), T(F32, (3, 1, 8))]
MOE = [T(F32, (2, 8)), T(F32, (2, 2)), T(I32, (2, 2))]
INFER_ERRORS = [
    (O.Linear(has_bias=True), [T(F32, (2, 4)), T(F32, (3, 4))], "linear takes 3 inputs, got 2"),
    (O.Embedding(), [T(F32, (5, 3)), T(F32, (2,))], "ids must be i32, got f32[2]"),
    (O.Embedding(), [CACHE, T(I32, (2,))], f"table must be a tensor, got {CACHE}"),
    (
        O.Linear(),
        [T(F32, (2, 4)), T(F32, (3, 5))],
        "x f32[2,4] and weight f32[3,5] disagree on the input dim: 4 != 5",
    ),
    (
        O.Int4Embedding(group_size=4),
        [T(DType.u4, (5, 8)), T(F32, (5, 2)), T(F32, (3,))],
        "ids must be i32, got f32[3]",
    ),
    (
        O.Int4Embedding(group_size=4),
        [T(F32, (5, 8)), T(F32, (5, 2)), T(I32, (3,))],
        "qweight must be u4[vocab, hidden], got f32[5,8]",
    ),
    (
        O.Int4Embedding(group_size=3),
        [T(DType.u4, (5, 8)), T(F32, (5, 2)), T(I32, (3,))],
        "hidden dim 8 is not a multiple of group size 3",
    ),
    (
        O.Int4Embedding(group_size=4),
        [T(DType.u4, (5, 8)), T(F32, (4, 2)), T(I32, (3,))],
        "scales f32[4,2] must be [5,2]",
    ),
    (
        O.Int4Embedding(group_size=4, has_zeros=True),
        [T(DType.u4, (5, 8)), T(F32, (5, 2)), T(F32, (5, 1)), T(I32, (3,))],
        "zeros f32[5,1] must be [5,2]",
    ),
    (
        O.Int4Embedding(group_size=4, has_zeros=True),
        [T(DType.u4, (5, 8)), T(F32, (5, 2)), T(I32, (3,))],
        "int4_embedding takes 4 inputs, got 3",
    ),
    (
        O.Int4Embedding(group_size=4, dtype=DType.i32),
        [T(DType.u4, (5, 8)), T(F32, (5, 2)), T(I32, (3,))],
        "dtype must be a float, got i32",
    ),
    (
        O.Int4Embedding(group_size=0),
        [T(DType.u4, (5, 8)), T(F32, (5, 2)), T(I32, (3,))],
        "group size must be positive, got 0",
    ),
    (O.Linear(), [T(F32, (2, 4)), T(I32, (3, 4))], "weight must be a float tensor, got i32[3,4]"),
    (
        O.Int4Linear(group_size=3),
        [T(F32, (2, 8)), T(DType.u4, (4, 8)), T(F32, (4, 2))],
        "in dim 8 is not a multiple of group size 3",
    ),
    (
        O.Int4Linear(group_size=4),
        [T(F32, (2, 8)), T(DType.u4, (4, 8)), T(F32, (4, 3))],
        "scales f32[4,3] must be [4,2]",
    ),
    (
        O.Int4Linear(group_size=4, has_perm=True),
        [T(F32, (2, 8)), T(DType.u4, (4, 8)), T(F32, (4, 2)), T(I32, (4,))],
        "perm i32[4] must be i32[8]",
    ),
    (
        O.Int4Linear(group_size=4, has_perm=True),
        [T(F32, (2, 8)), T(DType.u4, (4, 8)), T(F32, (4, 2)), T(F32, (8,))],
        "perm f32[8] must be i32[8]",
    ),
    (
        O.Int4Linear(group_size=4, has_zeros=True, has_perm=True, has_bias=True),
        [T(F32, (2, 8)), T(DType.u4, (4, 8)), T(F32, (4, 2)), T(I32, (8,))],
        "int4_linear takes 6 inputs, got 4",
    ),
    (O.RMSNorm(), [T(F32, (2, 8)), T(F32, (4,))], "norm weight f32[4] must be [8] for x f32[2,8]"),
    (
        O.AddRMSNorm(),
        [T(F32, (2, 8)), T(DType.f16, (2, 8)), T(F32, (8,))],
        "x f32[2,8] and residual f16[2,8] must have the same type",
    ),
    (
        O.Rotary(rotary_dim=3),
        [T(F32, (2, 1, 4)), T(I32, (2,))],
        "rotary_dim 3 must be even and in (0, 4]",
    ),
    (
        O.Rotary(rotary_dim=4),
        [T(F32, (2, 1, 4)), T(I32, (3,))],
        "positions must be i32[2], got i32[3]",
    ),
    (O.Attention(num_heads=4), QKV, "q f32[3,2,8] must have 4 heads"),
    (
        O.Attention(num_heads=3, num_kv_heads=2),
        [T(F32, (3, 3, 8)), T(F32, (3, 2, 8)), T(F32, (3, 2, 8))],
        "num_heads must be a multiple of num_kv_heads",
    ),
    (O.Attention(num_heads=2, sliding_window=0), QKV, "sliding_window must be positive"),
    (O.PagedAttention(num_heads=2, layer=2), [*QKV, CACHE], "layer 2 outside the cache's 2 layers"),
    (
        O.PagedAttention(num_heads=2, form="verify"),
        [*QKV, CACHE],
        "form must be one of ('prefill', 'decode'), got 'verify'",
    ),
    (O.PagedAttention(num_heads=2), [*QKV, T(F32, (1,))], "kv_cache must be a kvcache, got f32[1]"),
    (
        O.PagedAttention(num_heads=2),
        [*QKV, KVCacheType(2, 1, 4, F32)],
        "k f32[3,1,8] does not match the cache's 1 kv heads x 4",
    ),
    (
        O.PagedAttention(num_heads=2),
        [*QKV, KVCacheType(2, 1, 8, DType.i32)],
        "k f32[3,1,8] and the cache (i32) must both be float",
    ),
    (
        O.Add(),
        [T(F32, (2, 3)), T(DType.f16, (2, 3))],
        "operands differ in dtype: f32[2,3] vs f16[2,3]",
    ),
    (O.Mul(), [T(F32, (2, 3)), T(F32, (4,))], "shapes [2,3] and [4] do not broadcast"),
    (O.GELU(approximate="fast"), [T(F32, (2,))], "approximate must be one of ('none', 'tanh')"),
    (O.Softmax(axis=2), [T(F32, (2, 3))], "axis 2 out of range for rank 2"),
    (O.Cast(), [T(DType.u4, (2, 4))], "cannot cast packed u4; dequantize through int4_linear"),
    (
        O.Cast(dtype=DType.u4),
        [T(F32, (2, 4))],
        "cannot cast to packed u4; quantize weights offline",
    ),
    (O.Reshape(shape=(5,)), [T(F32, (2, 3))], "cannot reshape [2,3] to [5]"),
    (O.Transpose(perm=(0, 0)), [T(F32, (2, 3))], "perm [0, 0] is not a permutation of rank 2"),
    (
        O.Concat(axis=0),
        [T(F32, (2, 3)), T(F32, (2, 4))],
        "concat inputs differ off axis 0: f32[2,3] vs f32[2,4]",
    ),
    (
        O.Concat(axis=0),
        [T(F32, ("seq", 3)), T(F32, ("seq", 3))],
        "concat axis dim must be static, got f32[seq,3]",
    ),
    (O.Split(sizes=(1, 1)), [T(F32, (2, 3))], "sizes [1, 1] do not sum to dim 3 of f32[2,3]"),
    (O.MoERoute(top_k=5), [T(F32, (2, 4))], "top_k 5 must be in 1..4"),
    (
        O.MoEExperts(),
        [*MOE[:2], T(F32, (2, 2)), *[T(F32, (4, 3, 8))] * 2, T(F32, (4, 8, 3))],
        "ids f32[2,2] must be i32 shaped like weights f32[2,2]",
    ),
    (
        O.MoEExperts(),
        [*MOE, T(F32, (4, 3, 7)), T(F32, (4, 3, 8)), T(F32, (4, 8, 3))],
        "gate f32[4,3,7] must be [4, 3, 8]",
    ),
    (
        O.MoEExperts(fused_gate_up=True),
        [*MOE, T(F32, (4, 3, 8)), T(F32, (4, 8, 3))],
        "gate_up f32[4,3,8] must be [4, 6, 8]",
    ),
]


@pytest.mark.parametrize(
    ("op", "types", "message"), INFER_ERRORS, ids=lambda v: getattr(v, "opname", None)
)
def test_infer_errors_are_reported_under_the_node(op: O.Op, types: list, message: str) -> None:
    b = GraphBuilder("bad")
    args = [b.input(f"in{i}", t) for i, t in enumerate(types)]
    node = Node(op, tuple(args), (types[0],))
    graph = Graph("bad", [*b.nodes, node], {"out": node.out})
    assert_marked(verify_error(graph), message, f"= {op.opname}(")


# --- reshape dims -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("src", "target", "want"),
    [
        (("seq", 896), (-1, 14, 64), ("seq", 14, 64)),
        (("seq", 14, 64), (-1, 896), ("seq", 896)),
        (("seq", 14, 64), ("seq", -1), ("seq", 896)),
        (("seq", 1), (-1,), ("seq",)),
        ((4, 6), (-1, 3), (8, 3)),
        ((2, 3), (6,), (6,)),
        (("batch", "seq", 4), ("batch", "seq", 2, 2), ("batch", "seq", 2, 2)),
    ],
)
def test_reshape_dims(src, target, want) -> None:
    assert reshape_dims(src, target) == want


@pytest.mark.parametrize(
    ("src", "target", "message"),
    [
        ((4,), (-1, -1), "has more than one -1"),
        ((4,), ("seq",), "names dims absent from [4]"),
        (("seq", 4), ("seq", 3), "cannot reshape [seq,4] to [seq,3]"),
        (("seq", 4), (8, -1), "cannot reshape [seq,4] to [8,-1]"),
        (("seq", 4), (2, -1), "symbolic dims may not be split or merged"),
        (("batch", "seq"), (-1,), "symbolic dims may not be split or merged"),
        (("seq", 4), (4,), "cannot reshape [seq,4] to [4]"),
    ],
)
def test_reshape_dims_refusals(src, target, message) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        reshape_dims(src, target)
