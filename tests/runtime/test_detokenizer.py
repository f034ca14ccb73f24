"""Incremental detokenization never emits a broken character; stop strings are found across tokens."""

from __future__ import annotations

import pytest

from ferrumc.frontend.model import TokenizerInfo
from ferrumc.runtime.detokenizer import REPLACEMENT, IncrementalDetokenizer, StopStrings
from ferrumc.runtime.tokenizer import Tokenizer
from ferrumc.tests.tiny_checkpoints import build_tokenizer

TEXTS = [
    "Hi 😀 there",  # one emoji over two byte-level tokens
    "数据库",  # CJK, a character split over tokens
    "🤖🤖 x",  # emoji whose bytes are three separate tokens
    "café 🇫🇷 and 👩‍👩‍👧",  # combining flags and ZWJ sequences
    "  leading spaces\n\nand a tab\t!",
]


def stream(tokenizer: Tokenizer, prompt: str, text: str) -> list[str]:
    detok = IncrementalDetokenizer(tokenizer, tokenizer.encode(prompt))
    return [detok.push(t) for t in tokenizer.encode(text)] + [detok.flush()]


@pytest.mark.parametrize("text", TEXTS)
def test_streamed_text_is_whole_characters_and_adds_up(smollm2_tokenizer, text):
    pieces = stream(smollm2_tokenizer, "Hello", text)
    assert "".join(pieces) == text
    assert not any(REPLACEMENT in p for p in pieces)


def test_a_split_character_is_held_until_complete(smollm2_tokenizer):
    ids = smollm2_tokenizer.encode("🤖")
    assert len(ids) == 3, "the emoji's four bytes come as three tokens"
    detok = IncrementalDetokenizer(smollm2_tokenizer, smollm2_tokenizer.encode("a"))
    assert [detok.push(t) for t in ids] == ["", "", "🤖"]


def test_an_unfinished_character_at_the_end_is_flushed_as_replacement(smollm2_tokenizer):
    detok = IncrementalDetokenizer(smollm2_tokenizer, [])
    assert detok.push(smollm2_tokenizer.encode("🤖")[0]) == ""
    assert detok.flush() == REPLACEMENT


def test_special_tokens_are_skipped(smollm2_tokenizer):
    assert smollm2_tokenizer.encode("ok<|im_end|>")[-1] == smollm2_tokenizer.token_to_id(
        "<|im_end|>"
    )
    assert "".join(stream(smollm2_tokenizer, "x", "ok<|im_end|>")) == "ok"


def test_stop_strings_hold_back_a_possible_start_and_cut_the_stop():
    stops = StopStrings(["END", "\n\n"])
    assert stops.push("Hello E") == "Hello "
    assert stops.push("N") == ""
    assert stops.push("Dless") == ""
    assert stops.stopped
    assert stops.push("more") == ""


def test_stop_strings_release_a_false_start():
    stops = StopStrings(["END"])
    assert stops.push("EN") == ""
    assert stops.push("X") == "ENX"
    assert stops.push("E") == ""
    assert stops.flush() == "E"
    assert not stops.stopped


def test_the_earliest_stop_string_wins():
    stops = StopStrings(["cd", "b"])
    assert stops.push("abcd") == "a"


def test_no_stop_strings_pass_everything():
    stops = StopStrings([])
    assert stops.push("abc") == "abc"
    assert stops.flush() == ""


def test_stop_string_spanning_tokens_with_the_real_tokenizer(smollm2_tokenizer):
    tok = smollm2_tokenizer
    detok, stops = IncrementalDetokenizer(tok, []), StopStrings(["数据库"])
    out = [stops.push(detok.push(t)) for t in tok.encode("see 数据库 now")]
    assert "".join(out) == "see "
    assert stops.stopped


def tiny_info(add_bos: bool) -> TokenizerInfo:
    return TokenizerInfo(
        tokenizer_json=build_tokenizer().to_str(),
        bos_token="<s>",
        bos_token_id=1,
        add_bos_token=add_bos,
    )


def test_bos_is_prepended_once_when_the_model_wants_it():
    with_bos, without = Tokenizer(tiny_info(True)), Tokenizer(tiny_info(False))
    ids = without.encode("Hello")
    assert with_bos.encode("Hello") == [1, *ids]
    assert with_bos.encode("<s>Hello") == [1, *ids], "a BOS in the text is not doubled"
    assert with_bos.encode("Hello", add_bos=False) == ids
    assert without.encode("Hello", add_bos=True) == [1, *ids]
    assert with_bos.decode([1, *ids]) == "Hello"
