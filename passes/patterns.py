"""Helpers the passes share: which values are weight-only, and `rebuild` with weights pulled forward."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ..ir.graph import Graph, GraphBuilder, Node, Value, rebuild
from ..ir.ops import Concat, Int4Linear, Op, Split, Weight

# Gives the new value of an old one: defined before the node being rewritten, or weight-only
# (then copied into the new graph ahead of its turn).
Early = Callable[[Value], Value]
Rule = Callable[[Node, tuple[Value, ...], GraphBuilder, Early], Sequence[Value] | None]


def weight_only_nodes(graph: Graph) -> set[Node]:
    """Weights, and nodes all of whose inputs are weight-only: computable at compile time."""
    found: set[Node] = set()
    for node in graph.nodes:
        if isinstance(node.op, Weight) or (
            node.inputs and all(v.node in found for v in node.inputs)
        ):
            found.add(node)
    return found


def weight_sources(value: Value) -> list[Weight]:
    """The Weight ops a weight-only value is computed from, in first-use order."""
    seen: list[Weight] = []
    stack = [value.node]
    while stack:
        node = stack.pop()
        if isinstance(node.op, Weight):
            if node.op not in seen:
                seen.append(node.op)
        else:
            stack.extend(reversed([v.node for v in node.inputs]))
    return seen


def rewrite(graph: Graph, rule: Rule) -> Graph:
    """`rebuild` `graph` through `rule`, which may call `early(v)` for values it needs ahead of time.

    A fusion emits its fused node where the first matched node stood, but the weights of the
    later matched nodes are usually declared just before those nodes. Weight-only values depend
    on no activation, so `early` copies them forward; when `rebuild` reaches them later they are
    not copied twice.
    """
    weight_only = weight_only_nodes(graph)
    new: dict[Value, Value] = {}

    def record(node: Node, values: Sequence[Value]) -> tuple[Value, ...]:
        new.update(zip(node.outputs, values, strict=True))
        return tuple(values)

    def early(b: GraphBuilder, v: Value) -> Value:
        if v not in new:
            assert v.node in weight_only, f"{v.node.op.opname} is needed early but not weight-only"
            ins = tuple(early(b, u) for u in v.node.inputs)
            out = b.emit(v.node.op, *ins)
            record(v.node, out if isinstance(out, tuple) else (out,))
        return new[v]

    def step(node: Node, ins: tuple[Value, ...], b: GraphBuilder) -> Sequence[Value]:
        if node.outputs[0] in new:  # already copied forward by `early`
            return tuple(new[v] for v in node.outputs)
        out = rule(node, ins, b, lambda v: early(b, v))
        if out is None:
            emitted = b.emit(node.op, *ins)
            out = emitted if isinstance(emitted, tuple) else (emitted,)
        return record(node, out)

    return rebuild(graph, step)


def emit1(b: GraphBuilder, op: Op, *inputs: Value) -> Value:
    """Emit a single-output op."""
    out = b.emit(op, *inputs)
    assert isinstance(out, Value)
    return out


def emitn(b: GraphBuilder, op: Op, *inputs: Value) -> tuple[Value, ...]:
    """Emit an op and return all its outputs as a tuple (even when it has one)."""
    out = b.emit(op, *inputs)
    return out if isinstance(out, tuple) else (out,)


def shared_input_slots(op: Op) -> tuple[int, ...]:
    """Input slots of a linear that fused linears share rather than concatenate: an int4 linear's
    perm (it indexes x, whose columns all of them read)."""
    if isinstance(op, Int4Linear) and op.has_perm:
        return (3 + op.has_zeros,)
    return ()


def fuse_linears(
    b: GraphBuilder, x: Value, linears: Sequence[Node], early: Early
) -> tuple[Value, ...]:
    """One linear on the row-concatenated weights (and biases) of `linears`, all reading `x`,
    split back into their outputs: y_i = split(x @ concat(w_0..w_n).T)[i]. The linears have one
    op (for int4: q, scales, zeros and bias concatenate along N; the perm, equal, is shared)."""
    op = linears[0].op
    shared = shared_input_slots(op)
    args = [x]
    for slot in range(1, len(linears[0].inputs)):
        if slot in shared:
            args.append(early(linears[0].inputs[slot]))
        else:
            args.append(emit1(b, Concat(axis=0), *(early(n.inputs[slot]) for n in linears)))
    y = emit1(b, op, *args)
    sizes = tuple(n.out.tensor.shape[-1] for n in linears)
    return emitn(b, Split(axis=-1, sizes=sizes), y)  # type: ignore[arg-type]
