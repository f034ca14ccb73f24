"""Compile progress: one bar over the phases, the current detail (pass, weight, kernel count) beside it, timings at the end."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator, Sequence
from typing import TextIO

from tqdm import tqdm


class CompileProgress:
    """Times each phase; draws a bar only when asked to and writing to a terminal."""

    def __init__(self, phases: Sequence[str], enabled: bool, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.timings: dict[str, float] = {}
        self.bar = tqdm(
            total=len(phases),
            desc="compile: ",
            unit="phase",
            file=self.stream,
            leave=False,
            disable=not (enabled and self.stream.isatty()),
            # set_description adds ": " after the phase name; postfix arrives as ", detail".
            bar_format="{desc}{n_fmt}/{total_fmt} phases |{bar:20}| {elapsed}{postfix}",
        )

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        self.bar.set_description(name)
        self.bar.set_postfix_str("", refresh=True)
        start = time.perf_counter()
        yield
        self.timings[name] = round(time.perf_counter() - start, 3)
        self.bar.update(1)

    def detail(self, text: str) -> None:
        self.bar.set_postfix_str(text, refresh=True)

    def close(self, headline: str | None) -> None:
        """Remove the bar and, when enabled and given a headline, print it and the phase timings."""
        self.bar.close()
        if self.enabled and headline is not None:
            phases = ", ".join(f"{name} {seconds:.1f}s" for name, seconds in self.timings.items())
            total = sum(self.timings.values())
            print(f"{headline} in {total:.1f}s ({phases})", file=self.stream)
