"""Lift weight-only subgraphs out of the graphs: each becomes a derived Weight plus a small graph
that computes it from checkpoint weights, which the bundle writer runs once at compile time.

Derived names read like checkpoint names:
  concat(layers.0.attn.{q,k,v}.weight)      -> layers.0.attn.qkv.weight
  concat(layers.0.mlp.{gate,up}.weight)     -> layers.0.mlp.gate_up.weight
  cast(layers.0.attn.q.weight) to f16       -> layers.0.attn.q.weight.f16  (dtype suffix)
  quantize_int4(layers.0.mlp.down.weight)   -> layers.0.mlp.down.weight.{q4,scales,zeros}
  any other op                              -> <name of its first input>.<op>[.<output index>]
The same computation gets the same name in every graph of a module (computed once); a name
already taken by a different weight gets a ".2", ".3", ... suffix.
"""

from __future__ import annotations

from ..ir.graph import Graph, GraphBuilder, Module, Node, Value, live_nodes, rebuild
from ..ir.ops import Cast, Concat, QuantizeInt4, Weight
from ..ir.printer import print_graph
from .patterns import emitn, weight_only_nodes

# Names of quantize_int4's outputs, the int4 linear's inputs (GPTQ's weights are named alike).
INT4_PARTS = ("q4", "scales", "zeros")


def lift_weight_transforms(module: Module) -> tuple[Module, dict[str, Graph]]:
    """Replace every weight-only value read at run time by a derived weight.

    Returns the new module and `transforms`: derived name -> a graph without inputs whose single
    output, named like the derived weight, computes it from the original weights, so
    `run_graph(transforms[name], {}, weights)[name]` is the derived weight's data.
    """
    taken = set(module.weight_types())
    by_text: dict[str, str] = {}  # transform text -> derived name, shared by all graphs
    transforms: dict[str, Graph] = {}

    def derived_weight(graph: Graph, v: Value) -> Weight:
        text = print_graph(_transform(graph, v, "transform"))
        if text not in by_text:
            name = _unique(derive_name(v), taken)
            taken.add(name)
            by_text[text] = name
            transforms[name] = _transform(graph, v, name)
        return Weight(by_text[text], v.tensor)

    graphs = {}
    for key, graph in module.graphs.items():
        derived = {v: derived_weight(graph, v) for v in _lifted_values(graph)}
        graphs[key] = _replace(graph, derived) if derived else graph
    return Module(graphs), transforms


def _replace(graph: Graph, derived: dict[Value, Weight]) -> Graph:
    """`graph` reading the derived weights instead of computing them; what they replace goes."""

    def rule(node: Node, ins: tuple[Value, ...], b: GraphBuilder) -> tuple[Value, ...] | None:
        outs = node.outputs
        if not any(v in derived for v in outs):
            return None
        # Outputs not lifted (read only inside lifted values) come from a copy left dead.
        copies = outs if all(v in derived for v in outs) else emitn(b, node.op, *ins)
        return tuple(
            emitn(b, derived[v])[0] if v in derived else c
            for v, c in zip(outs, copies, strict=True)
        )

    lifted = rebuild(graph, rule)
    return rebuild(lifted, keep=live_nodes(lifted))


def _lifted_values(graph: Graph) -> list[Value]:
    """Weight-only values, other than plain weights, read by run-time nodes or returned."""
    weight_only = weight_only_nodes(graph)
    read = [v for n in graph.nodes if n not in weight_only for v in n.inputs]
    read += graph.outputs.values()
    found = (v for v in read if v.node in weight_only and not isinstance(v.node.op, Weight))
    return list(dict.fromkeys(found))


def _transform(graph: Graph, value: Value, name: str) -> Graph:
    """The nodes of `graph` that `value` is computed from, copied into a graph returning it as `name`."""
    needed: set[Node] = set()
    stack = [value.node]
    while stack:
        node = stack.pop()
        if node not in needed:
            needed.add(node)
            stack.extend(v.node for v in node.inputs)
    b = GraphBuilder(name)
    new: dict[Value, Value] = {}
    for node in graph.nodes:
        if node in needed:
            outs = emitn(b, node.op, *(new[v] for v in node.inputs))
            new.update(zip(node.outputs, outs, strict=True))
    return b.build({name: new[value]})


def derive_name(value: Value) -> str:
    """A readable name for a weight-only value, built from the weights it is computed from."""
    op = value.node.op
    ins = value.node.inputs
    if isinstance(op, Weight):
        return op.name
    if isinstance(op, Cast):
        return f"{derive_name(ins[0])}.{op.dtype.value}"
    if isinstance(op, Concat) and len(ins) > 1:
        joined = _join_names([derive_name(v) for v in ins])
        if joined is not None:
            return joined
    if isinstance(op, QuantizeInt4):
        return f"{derive_name(ins[0])}.{INT4_PARTS[value.index]}"
    index = f".{value.index}" if len(value.node.types) > 1 else ""
    return f"{derive_name(ins[0])}.{op.opname}{index}"


def _join_names(names: list[str]) -> str | None:
    """layers.0.attn.{q,k,v}.weight -> layers.0.attn.qkv.weight; gate, up -> gate_up."""
    parts = [n.split(".") for n in names]
    prefix = 0
    while all(len(p) > prefix + 1 and p[prefix] == parts[0][prefix] for p in parts):
        prefix += 1
    suffix = 0
    while all(
        len(p) > prefix + suffix + 1 and p[-1 - suffix] == parts[0][-1 - suffix] for p in parts
    ):
        suffix += 1
    middles = [".".join(p[prefix : len(p) - suffix]) for p in parts]
    if len(set(middles)) != len(middles):
        return None  # the same weight twice: no readable join
    joined = ("" if all(len(m) == 1 for m in middles) else "_").join(middles)
    head, tail = parts[0][:prefix], parts[0][len(parts[0]) - suffix :]
    return ".".join([*head, joined, *tail])


def _unique(name: str, taken: set[str]) -> str:
    if name not in taken:
        return name
    n = 2
    while f"{name}.{n}" in taken:
        n += 1
    return f"{name}.{n}"
