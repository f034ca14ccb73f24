"""Graphs of the ferrumc IR: nodes in SSA form, built through GraphBuilder and rewritten by `rebuild`."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from ..errors import VerifyError
from .ops import Input, Op, Weight
from .types import DType, Shape, TensorType, Type


@dataclass(eq=False)
class Node:
    """One op applied to values; `types` are its outputs' inferred types."""

    op: Op
    inputs: tuple[Value, ...]
    types: tuple[Type, ...]

    @property
    def outputs(self) -> tuple[Value, ...]:
        return tuple(Value(self, i) for i in range(len(self.types)))

    @property
    def out(self) -> Value:
        assert len(self.types) == 1, f"{self.op.opname} has {len(self.types)} outputs"
        return Value(self, 0)


@dataclass(frozen=True)
class Value:
    """Output `index` of `node`; equal and hashable by identity of the node."""

    node: Node
    index: int = 0

    @property
    def type(self) -> Type:
        return self.node.types[self.index]

    @property
    def tensor(self) -> TensorType:
        t = self.type
        assert isinstance(t, TensorType), f"{t} is not a tensor"
        return t


@dataclass(eq=False)
class Graph:
    """A function: nodes in topological order (sources included) and named outputs."""

    name: str
    nodes: list[Node]
    outputs: dict[str, Value]

    @property
    def inputs(self) -> list[Node]:
        return [n for n in self.nodes if isinstance(n.op, Input)]

    @property
    def weights(self) -> list[Node]:
        return [n for n in self.nodes if isinstance(n.op, Weight)]

    def weight_types(self) -> dict[str, TensorType]:
        return {n.op.name: n.op.type for n in self.weights}  # type: ignore[attr-defined]

    def users(self) -> dict[Value, list[Node]]:
        """For each value, the nodes that read it (graph outputs are not listed)."""
        uses: dict[Value, list[Node]] = {}
        for node in self.nodes:
            for v in node.inputs:
                uses.setdefault(v, []).append(node)
        return uses

    def count(self, op_type: type[Op]) -> int:
        return sum(isinstance(n.op, op_type) for n in self.nodes)

    def __str__(self) -> str:
        from .printer import print_graph

        return print_graph(self)


@dataclass(eq=False)
class Module:
    """Several graphs (entry points such as prefill and decode) sharing weights by name."""

    graphs: dict[str, Graph] = field(default_factory=dict)

    def weight_types(self) -> dict[str, TensorType]:
        out: dict[str, TensorType] = {}
        for g in self.graphs.values():
            out.update(g.weight_types())
        return out

    def __str__(self) -> str:
        from .printer import print_module

        return print_module(self)


class GraphBuilder:
    """Appends typed nodes; sources (inputs, weights) are deduplicated by name."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.nodes: list[Node] = []
        self._sources: dict[tuple[type, str], Node] = {}

    def input(self, name: str, type_: Type) -> Value:
        return self._source(Input(name, type_))

    def weight(self, name: str, dtype: DType, shape: Shape) -> Value:
        return self._source(Weight(name, TensorType(dtype, tuple(shape))))

    def _source(self, op: Input | Weight) -> Value:
        key = (type(op), op.name)
        if key in self._sources:
            existing = self._sources[key]
            if existing.op != op:
                raise VerifyError(
                    f"{op.opname} {op.name!r} declared twice with types {existing.op.type} and {op.type}"
                )
            return existing.out
        node = Node(op, (), (op.type,))
        self._sources[key] = node
        self.nodes.append(node)
        return node.out

    def emit(self, op: Op, *inputs: Value) -> Value | tuple[Value, ...]:
        """Add `op` applied to `inputs`; returns its value, or a tuple when it has several outputs."""
        if isinstance(op, Input | Weight):
            return self._source(op)
        try:
            types = op.verify([v.type for v in inputs])
        except VerifyError as e:
            args = ", ".join(str(v.type) for v in inputs)
            raise VerifyError(f"{op.opname}({args}): {e}") from None
        node = Node(op, tuple(inputs), types)
        self.nodes.append(node)
        return node.out if len(types) == 1 else node.outputs

    def build(self, outputs: dict[str, Value]) -> Graph:
        return Graph(self.name, self.nodes, dict(outputs))


# A rewrite sees a node with its inputs already mapped into the new graph and either returns
# the values that replace the node's outputs, or None to copy the node unchanged.
Rewrite = Callable[[Node, tuple[Value, ...], GraphBuilder], Sequence[Value] | None]


def rebuild(
    graph: Graph, rewrite: Rewrite | None = None, keep: Iterable[Node] | None = None
) -> Graph:
    """Copy `graph` node by node through `rewrite`, re-inferring every type.

    `keep`, if given, limits the copy to those nodes (dead-code elimination passes the live set).
    """
    b = GraphBuilder(graph.name)
    mapping: dict[Value, Value] = {}
    live = None if keep is None else set(keep)
    for node in graph.nodes:
        if live is not None and node not in live:
            continue
        ins = tuple(mapping[v] for v in node.inputs)
        new = rewrite(node, ins, b) if rewrite else None
        if new is None:
            out = b.emit(node.op, *ins)
            new = out if isinstance(out, tuple) else (out,)
        assert len(new) == len(node.types), (
            f"rewrite of {node.op.opname} returned {len(new)} values"
        )
        for old_v, new_v in zip(node.outputs, new, strict=True):
            mapping[old_v] = new_v
    return b.build({k: mapping[v] for k, v in graph.outputs.items()})


def live_nodes(graph: Graph) -> list[Node]:
    """Nodes that contribute to an output (Input nodes are always kept: they are the signature)."""
    live: set[Node] = set()
    stack = [v.node for v in graph.outputs.values()]
    while stack:
        node = stack.pop()
        if node in live:
            continue
        live.add(node)
        stack.extend(v.node for v in node.inputs)
    return [n for n in graph.nodes if n in live or isinstance(n.op, Input)]
