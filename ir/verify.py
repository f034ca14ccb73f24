"""The IR verifier: SSA order, unique sources, and every node's types re-inferred and compared."""

from __future__ import annotations

from ..errors import VerifyError
from .graph import Graph, Module, Node, Value
from .ops import Input, Weight
from .printer import print_graph


def _fail(graph: Graph, node: Node | None, message: str) -> VerifyError:
    text = print_graph(graph, {node: message} if node is not None else None)
    where = f"graph {graph.name}"
    return VerifyError(f"{where}: {message}\n{text}")


def verify(graph: Graph) -> Graph:
    """Raise VerifyError (with the graph printed, the message under the bad node) or return `graph`."""
    defined: set[Value] = set()
    sources: dict[tuple[type, str], Node] = {}
    for node in graph.nodes:
        for v in node.inputs:
            if v not in defined:
                raise _fail(
                    graph,
                    node,
                    f"{node.op.opname} reads a value defined later or not in this graph",
                )
        if isinstance(node.op, Input | Weight):
            key = (type(node.op), node.op.name)
            if key in sources:
                raise _fail(graph, node, f"{node.op.opname} {node.op.name!r} is declared twice")
            sources[key] = node
        try:
            types = node.op.verify([v.type for v in node.inputs])
        except VerifyError as e:
            raise _fail(graph, node, str(e)) from None
        if tuple(types) != tuple(node.types):
            stored = ", ".join(map(str, node.types))
            raise _fail(
                graph,
                node,
                f"stored types {stored} differ from inferred {', '.join(map(str, types))}",
            )
        defined.update(node.outputs)
    if not graph.outputs:
        raise _fail(graph, None, "graph has no outputs")
    for name, v in graph.outputs.items():
        if v not in defined:
            raise _fail(graph, None, f"output {name!r} is not defined in the graph")
    return graph


def verify_module(module: Module) -> Module:
    weights: dict[str, object] = {}
    for graph in module.graphs.values():
        verify(graph)
        for name, t in graph.weight_types().items():
            if weights.setdefault(name, t) != t:
                raise VerifyError(
                    f"weight {name!r} has type {weights[name]} in one graph and {t} in {graph.name}"
                )
    return module
