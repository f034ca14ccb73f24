"""Runs passes in order: the graph is verified on entry and after each pass, optionally dumped, and timed."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import VerifyError
from ..ir.graph import Graph
from ..ir.printer import print_graph
from ..ir.verify import verify
from .base import Pass, PassContext


@dataclass(frozen=True)
class PassTiming:
    """How long one pass took on one graph."""

    name: str
    seconds: float


@dataclass
class PassManager:
    """Applies `passes` in order. With `dump_dir`, writes the IR text before the first pass
    (`00-input.ir`) and after each (`01-fuse-qkv.ir`, ...): the `--dump-ir` of the CLI."""

    passes: Sequence[Pass]
    dump_dir: Path | None = None
    ctx: PassContext = field(default_factory=PassContext)
    timings: list[PassTiming] = field(default_factory=list)
    # Called with each pass's name before it runs (the compile driver's progress bar).
    on_pass: Callable[[str], None] | None = None

    def run(self, graph: Graph) -> Graph:
        try:
            verify(graph)
        except VerifyError as e:
            raise VerifyError(f"the graph given to the pass manager is invalid: {e}") from None
        self._dump(0, "input", graph)
        for i, p in enumerate(self.passes, start=1):
            if self.on_pass is not None:
                self.on_pass(p.name)
            start = time.perf_counter()
            graph = p.run(graph, self.ctx)
            self.timings.append(PassTiming(p.name, time.perf_counter() - start))
            self._dump(i, p.name, graph)  # before verifying, so a broken graph can be read
            try:
                verify(graph)
            except VerifyError as e:
                raise VerifyError(
                    f"pass {p} produced an invalid graph (a bug in the pass): {e}"
                ) from None
        return graph

    def _dump(self, index: int, label: str, graph: Graph) -> None:
        if self.dump_dir is None:
            return
        self.dump_dir.mkdir(parents=True, exist_ok=True)
        (self.dump_dir / f"{index:02d}-{label}.ir").write_text(print_graph(graph))


def run_passes(
    graph: Graph,
    passes: Sequence[Pass],
    dump_dir: Path | None = None,
    ctx: PassContext | None = None,
) -> Graph:
    """Shorthand for PassManager(passes, dump_dir, ctx).run(graph)."""
    return PassManager(passes, dump_dir, ctx or PassContext()).run(graph)
