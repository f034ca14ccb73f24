"""eliminate-dead-code: drop every node (weights included) that no output depends on; inputs stay."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..ir.graph import Graph, live_nodes, rebuild
from .base import Pass, PassContext


@dataclass(frozen=True)
class EliminateDeadCode(Pass):
    """Keep the nodes that reach an output, and the graph's inputs (they are its signature)."""

    name: ClassVar[str] = "eliminate-dead-code"

    def run(self, graph: Graph, ctx: PassContext) -> Graph:
        live = live_nodes(graph)
        if len(live) == len(graph.nodes):
            return graph
        return rebuild(graph, keep=live)
