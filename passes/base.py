"""What a compiler pass is: a frozen dataclass with a CLI `name`, option fields and `run(graph, ctx)`."""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np

from ..errors import PassError
from ..ir.graph import Graph


@dataclass(frozen=True)
class PassContext:
    """What a pass may read besides the graph: checkpoint weights by name and the tokenizer, for
    data-dependent passes (GPTQ, weight statistics). Structural passes never touch it."""

    load_weight: Callable[[str], np.ndarray] | None = None
    # The model's tokenizer (text -> token ids), for passes that calibrate on text.
    tokenize: Callable[[str], list[int]] | None = None
    # Weights that passes computed from data (GPTQ's codes and scales), by name: the bundle
    # writer and the interpreter read them as they read checkpoint weights.
    derived: dict[str, np.ndarray] = field(default_factory=dict)

    def weight(self, name: str, *, by: str) -> np.ndarray:
        """The weight `name`'s data; `by` is the asking pass, named in the error if none were given."""
        if name in self.derived:
            return self.derived[name]
        if self.load_weight is None:
            raise PassError(
                f"pass {by} needs the weight {name!r} but the pass context has none; "
                "create it as PassContext(load_weight=model.weights.load)"
            )
        return self.load_weight(name)


@dataclass(frozen=True)
class Pass:
    """A graph-to-graph rewrite. File, CLI name and class match: fuse_qkv.py, "fuse-qkv", FuseQKV.

    A pass takes a valid graph and returns a valid graph; one that finds nothing to do returns the
    graph unchanged, so running a pass twice is the same as running it once.
    """

    name: ClassVar[str] = ""

    def run(self, graph: Graph, ctx: PassContext) -> Graph:
        raise NotImplementedError

    def __call__(self, graph: Graph, ctx: PassContext | None = None) -> Graph:
        return self.run(graph, ctx or PassContext())

    def error(self, message: str) -> PassError:
        """A PassError that names this pass; `message` should say what to do instead."""
        return PassError(f"pass {self.name}: {message}")

    def __str__(self) -> str:
        options = ", ".join(
            f"{f.name}={getattr(getattr(self, f.name), 'value', getattr(self, f.name))}"
            for f in dataclasses.fields(self)
        )
        return f"{self.name}{{{options}}}" if options else self.name


def all_passes() -> dict[str, type[Pass]]:
    """Every Pass subclass defined in this package, by CLI name (tests' passes excluded)."""
    for module in pkgutil.iter_modules([str(Path(__file__).parent)]):
        importlib.import_module(f"{__package__}.{module.name}")
    found: dict[str, type[Pass]] = {}
    stack = list(Pass.__subclasses__())
    while stack:
        cls = stack.pop()
        stack.extend(cls.__subclasses__())
        if cls.name and cls.__module__.startswith(__package__ + "."):
            assert found.setdefault(cls.name, cls) is cls, f"two passes named {cls.name}"
    return dict(sorted(found.items()))
