"""Session fixtures for compiled bundles: one compile cache per test session, each bundle compiled once.

tests/conftest.py imports these so that every test folder shares the same compiled bundles.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

SMOLLM2 = "smollm2"


@pytest.fixture(scope="session")
def bundle_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """FERRUMC_CACHE_DIR for the rest of the session: a fresh compile cache under tmp."""
    root = tmp_path_factory.mktemp("ferrumc-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FERRUMC_CACHE_DIR", str(root))
        yield root


@pytest.fixture(scope="session")
def compiled_bundle(
    bundle_cache_dir: Path, tiny_checkpoint: Callable[..., Path]
) -> Callable[..., Path]:
    """`compiled_bundle(name, dtype="f32")` -> an llvm bundle in the session's compile cache.

    `name` is a tiny model (tests/tiny_checkpoints.py) or "smollm2" (skipped when not
    installed). Compiled once per session; a failure is remembered and raised again.
    """
    made: dict[tuple[str, str], Path | BaseException] = {}

    def make(name: str, dtype: str = "f32") -> Path:
        from ferrumc.codegen.cache import cached_bundle

        if (name, dtype) not in made:
            try:
                made[name, dtype] = cached_bundle(
                    model_ref(name, tiny_checkpoint), dtype=dtype, progress=False
                )
            except Exception as e:
                made[name, dtype] = e
        result = made[name, dtype]
        if isinstance(result, BaseException):
            raise result
        return result

    return make


def model_ref(name: str, tiny_checkpoint: Callable[..., Path]) -> str:
    """What `ferrumc compile` would be given for this test model."""
    if name == SMOLLM2:
        from ferrumc.frontend.resolve import ALIASES, alias_file

        if alias_file(ALIASES[SMOLLM2]) is None:
            pytest.skip("SmolLM2 is not installed (`ferrumc pull smollm2`)")
        return SMOLLM2
    return str(tiny_checkpoint(name))
