"""Text form of the IR, one line per node: the format of golden tests, IR dumps and errors.

graph forward(%tokens: i32[seq], %positions: i32[seq]) {
  %embed.weight = weight : f32[49152,576]
  %0 = embedding(%embed.weight, %tokens) : f32[seq,576]
  %1, %2 = split(%0) axis=-1 sizes=[384,192] : f32[seq,384], f32[seq,192]
  return logits=%0
}
"""

from __future__ import annotations

import dataclasses
import json
import math

from .graph import Graph, Module, Node, Value
from .ops import Input, Op, Weight
from .rope import RopeScaling
from .types import DType


def _json(value: object) -> object:
    if isinstance(value, DType):
        return value.value
    if isinstance(value, RopeScaling):
        defaults = RopeScaling()
        return {
            f.name: getattr(value, f.name)
            for f in dataclasses.fields(value)
            if f.name == "kind" or getattr(value, f.name) != getattr(defaults, f.name)
        }
    if isinstance(value, tuple):
        return [_json(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"non-finite attribute {value}")
    return value


def format_attrs(op: Op) -> str:
    parts = []
    for name, value in op.attrs().items():
        if isinstance(op, Input | Weight):
            continue  # a source's name and type are the value's name and annotation
        parts.append(f"{name}={json.dumps(_json(value), separators=(',', ':'))}")
    return " ".join(parts)


class Namer:
    """Names values: sources by their own name, everything else by a counter."""

    def __init__(self) -> None:
        self.names: dict[Value, str] = {}
        self.counter = 0

    def define(self, node: Node) -> str:
        if isinstance(node.op, Input | Weight):
            self.names[node.out] = node.op.name
        else:
            for v in node.outputs:
                self.names[v] = str(self.counter)
                self.counter += 1
        return ", ".join("%" + self.names[v] for v in node.outputs)

    def ref(self, v: Value) -> str:
        return "%" + self.names.get(v, "<undefined>")


def print_graph(graph: Graph, notes: dict[Node, str] | None = None) -> str:
    """The graph as text; `notes` puts a `^ message` line under the given nodes."""
    namer = Namer()
    header = []
    for node in graph.inputs:
        header.append(f"{namer.define(node)}: {node.op.type}")  # type: ignore[attr-defined]
    lines = [f"graph {graph.name}({', '.join(header)}) {{"]
    for node in graph.nodes:
        if isinstance(node.op, Input):
            text = f"  {namer.ref(node.out)} = input"
        elif isinstance(node.op, Weight):
            text = f"  {namer.define(node)} = weight : {node.op.type}"
        else:
            args = ", ".join(namer.ref(v) for v in node.inputs)
            attrs = format_attrs(node.op)
            types = ", ".join(str(t) for t in node.types)
            lhs = namer.define(node)
            text = f"  {lhs} = {node.op.opname}({args}){' ' + attrs if attrs else ''} : {types}"
        if isinstance(node.op, Input) and not (notes and node in notes):
            continue  # inputs are printed in the header
        lines.append(text)
        if notes and node in notes:
            lines.append("  " + "^" * max(1, len(text.strip())) + " error: " + notes[node])
    outs = ", ".join(f"{name}={namer.ref(v)}" for name, v in graph.outputs.items())
    lines.append(f"  return {outs}")
    lines.append("}")
    return "\n".join(lines) + "\n"


def print_module(module: Module) -> str:
    return "\n".join(print_graph(g) for g in module.graphs.values())
