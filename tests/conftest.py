"""Shared fixtures: the tiny Hugging Face checkpoints, written once per test session."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

# Compiled bundles (one compile cache per session); they import TVM only when used.
from ferrumc.tests.bundle_fixtures import bundle_cache_dir, compiled_bundle  # noqa: F401
from ferrumc.tests.tiny_checkpoints import write_tiny_checkpoint


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """`tiny_checkpoint(name, dtype="f32")` -> its folder; shared, so copy it before changing it."""
    made: dict[tuple[str, str], Path] = {}

    def make(name: str, dtype: str = "f32") -> Path:
        if (name, dtype) not in made:
            folder = tmp_path_factory.mktemp(f"{name}_{dtype}")
            made[name, dtype] = write_tiny_checkpoint(name, folder, dtype=dtype)
        return made[name, dtype]

    return make
