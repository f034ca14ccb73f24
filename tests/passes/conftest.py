"""Helpers of the pass tests, as the `passes` fixture: Before/Expected text checks and numeric checks."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest

from ferrumc.ir import Graph, Module, parse_graph, print_graph, verify
from ferrumc.ir.interpreter import run_graph
from ferrumc.passes.base import Pass


class PassTester:
    """The TVM pass-test pattern: parse Before, run the pass, compare the printed IR with Expected."""

    @staticmethod
    def parse(text: str) -> Graph:
        return parse_graph(textwrap.dedent(text))

    def apply(self, p: Pass, before: str | Graph) -> Graph:
        graph = self.parse(before) if isinstance(before, str) else before
        return verify(p(graph))

    def check(self, p: Pass, before: str, expected: str) -> Graph:
        """Run `p` on Before, compare with Expected, and return the result."""
        after = self.apply(p, before)
        assert print_graph(after) == textwrap.dedent(expected).lstrip("\n")
        return after

    def check_idempotent(self, p: Pass, before: str) -> None:
        once = self.apply(p, before)
        assert print_graph(self.apply(p, once)) == print_graph(once)

    def check_unchanged(self, p: Pass, before: str) -> None:
        graph = self.parse(before)
        assert print_graph(self.apply(p, graph)) == print_graph(graph)

    @staticmethod
    def weights(target: Graph | Module, seed: int = 0, scale: float = 0.5) -> dict[str, np.ndarray]:
        """Random weights for every weight `target` declares (norms near 1, others ~N(0, scale))."""
        types = target.weight_types()
        rng = np.random.default_rng(seed)
        out = {}
        for name, t in sorted(types.items()):
            if t.dtype.is_float:
                values = rng.standard_normal(t.shape) * scale
                if "norm" in name:
                    values = 1.0 + values * 0.2
                out[name] = values.astype(t.dtype.numpy)
            else:
                out[name] = rng.integers(0, 16, t.shape).astype(t.dtype.numpy)
        return out

    @staticmethod
    def run(
        graph: Graph, inputs: dict[str, object], weights: dict[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        return run_graph(graph, inputs, weights)

    def assert_same_outputs(
        self,
        before: Graph,
        after: Graph,
        inputs: dict[str, object],
        atol: float = 1e-5,
        weights: dict[str, np.ndarray] | None = None,
    ) -> float:
        """Both graphs on the same inputs and random weights; returns the largest abs difference."""
        weights = weights if weights is not None else self.weights(before)
        want, got = self.run(before, inputs, weights), self.run(after, inputs, weights)
        assert want.keys() == got.keys()
        worst = 0.0
        for name in want:
            assert want[name].shape == got[name].shape and want[name].dtype == got[name].dtype
            diff = np.abs(want[name].astype(np.float64) - got[name].astype(np.float64)).max()
            assert diff <= atol, f"output {name}: max abs diff {diff} > {atol}"
            worst = max(worst, float(diff))
        return worst


@pytest.fixture
def passes() -> PassTester:
    return PassTester()


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
