"""Parse the printer's text back into graphs: `parse_graph(print_graph(g))` prints as `g`."""

from __future__ import annotations

import json
import re

from ..errors import ParseError, VerifyError
from .graph import Graph, GraphBuilder, Module, Value
from .ops import OPS, Weight
from .types import TensorType, Type, parse_type

_NAME = r"%([\w.\-]+)"
_TYPE = r"(kvcache<[^>]*>|\w+\[[^\]]*\])"
_HEADER = re.compile(r"^graph\s+([\w.\-]+)\((.*)\)\s*\{$")
_PARAM = re.compile(_NAME + r":\s*" + _TYPE)
_NODE = re.compile(r"^(%[\w.\-]+(?:\s*,\s*%[\w.\-]+)*)\s*=\s*(\w+)(.*)$")
_DECODER = json.JSONDecoder()


def _types(text: str, where: str) -> list[Type]:
    found = re.findall(_TYPE, text)
    if not found:
        raise ParseError(f"{where}: expected ': type', got {text!r}")
    return [parse_type(t) for t in found]


def _attrs(text: str, where: str) -> tuple[dict[str, object], str]:
    """Parse `k=json k=json ... : types` into the attributes and the text after the colon."""
    attrs: dict[str, object] = {}
    i = 0
    while True:
        while i < len(text) and text[i] == " ":
            i += 1
        if i >= len(text) or text[i] == ":":
            return attrs, text[i + 1 :]
        m = re.compile(r"(\w+)=").match(text, i)
        if not m:
            raise ParseError(f"{where}: expected key=value at {text[i:]!r}")
        try:
            value, end = _DECODER.raw_decode(text, m.end())
        except json.JSONDecodeError as e:
            raise ParseError(f"{where}: bad value for {m.group(1)}: {e}") from None
        attrs[m.group(1)] = value
        i = end


def parse_module(text: str) -> Module:
    module = Module()
    lines = [(n + 1, ln.strip()) for n, ln in enumerate(text.splitlines())]
    lines = [(n, ln) for n, ln in lines if ln and not ln.startswith("#")]
    i = 0
    while i < len(lines):
        lineno, line = lines[i]
        m = _HEADER.match(line)
        if not m:
            raise ParseError(f"line {lineno}: expected 'graph NAME(...) {{', got {line!r}")
        b = GraphBuilder(m.group(1))
        env: dict[str, Value] = {}
        for pm in _PARAM.finditer(m.group(2)):
            env[pm.group(1)] = b.input(pm.group(1), parse_type(pm.group(2)))
        outputs: dict[str, Value] | None = None
        i += 1
        while i < len(lines) and lines[i][1] != "}":
            lineno, line = lines[i]
            where = f"line {lineno}"
            try:
                if line.startswith("return"):
                    outputs = {}
                    for part in filter(None, (p.strip() for p in line[len("return") :].split(","))):
                        name, _, ref = part.partition("=")
                        outputs[name.strip()] = _lookup(env, ref.strip(), where)
                else:
                    _parse_node(b, env, line, where)
            except (VerifyError, ValueError, TypeError) as e:
                raise ParseError(f"{where}: {e}\n  {line}") from None
            i += 1
        if i >= len(lines) or outputs is None:
            raise ParseError(f"graph {b.name}: missing 'return' or closing '}}'")
        module.graphs[b.name] = b.build(outputs)
        i += 1
    return module


def parse_graph(text: str) -> Graph:
    graphs = list(parse_module(text).graphs.values())
    if len(graphs) != 1:
        raise ParseError(f"expected one graph, found {len(graphs)}")
    return graphs[0]


def _lookup(env: dict[str, Value], ref: str, where: str) -> Value:
    if not ref.startswith("%") or ref[1:] not in env:
        raise ParseError(f"{where}: undefined value {ref}")
    return env[ref[1:]]


def _parse_node(b: GraphBuilder, env: dict[str, Value], line: str, where: str) -> None:
    m = _NODE.match(line)
    if not m:
        raise ParseError(f"{where}: cannot parse {line!r}")
    names = [n.strip()[1:] for n in m.group(1).split(",")]
    opname, rest = m.group(2), m.group(3)
    if opname == "weight":
        (t,) = _types(rest, where)
        if not isinstance(t, TensorType):
            raise ParseError(f"{where}: a weight must be a tensor")
        env[names[0]] = b.emit(Weight(names[0], t))  # type: ignore[assignment]
        return
    if opname not in OPS:
        raise ParseError(f"{where}: unknown op {opname!r}; known: {', '.join(sorted(OPS))}")
    rest = rest.strip()
    if not rest.startswith("("):
        raise ParseError(f"{where}: expected '(' after {opname}")
    close = rest.index(")")
    args = [_lookup(env, a.strip(), where) for a in rest[1:close].split(",") if a.strip()]
    attrs, type_text = _attrs(rest[close + 1 :], where)
    op = OPS[opname].from_attrs(attrs)
    out = b.emit(op, *args)
    values = out if isinstance(out, tuple) else (out,)
    declared = _types(type_text, where)
    if len(values) != len(names) or [v.type for v in values] != declared:
        inferred = ", ".join(str(v.type) for v in values)
        raise ParseError(
            f"{where}: declared {', '.join(map(str, declared))} but {opname} infers {inferred}"
        )
    env.update(zip(names, values, strict=True))
