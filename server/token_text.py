"""Each token's own bytes and text, for logprobs: exact for byte-level BPE and SentencePiece byte tokens."""

from __future__ import annotations

import json
import re
from functools import lru_cache

from tokenizers import Tokenizer, pre_tokenizers

_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")  # SentencePiece's byte fallback


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte -> printable character table, inverted (the ByteLevel pre-tokenizer's alphabet)."""
    # The alphabet is ordered as GPT-2's bytes_to_unicode builds it: printable bytes keep their
    # own character, the others map to 256, 257, ... in byte order.
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[chr(b)] = b
        else:
            table[chr(256 + extra)] = b
            extra += 1
    assert set(table) == set(pre_tokenizers.ByteLevel.alphabet())
    return table


def _decoder_types(decoder: dict | None) -> set[str]:
    if not decoder:
        return set()
    kinds = {decoder.get("type", "")}
    for d in decoder.get("decoders", []) or []:
        kinds |= _decoder_types(d)
    return kinds


class TokenText:
    """`bytes_of(id)` and `text_of(id)` for one tokenizer, cached per token."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        decoder = json.loads(tokenizer.to_str()).get("decoder")
        self.byte_level = "ByteLevel" in _decoder_types(decoder)
        self.added = {i for i in tokenizer.get_added_tokens_decoder()}
        self._cache: dict[int, bytes] = {}

    def bytes_of(self, token_id: int) -> bytes:
        if token_id not in self._cache:
            self._cache[token_id] = self._bytes(token_id)
        return self._cache[token_id]

    def text_of(self, token_id: int) -> str:
        """The token's text; a piece of a UTF-8 character shows as OpenAI shows it (`bytes:\\xNN`)."""
        raw = self.bytes_of(token_id)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return "bytes:" + "".join(f"\\x{b:02x}" for b in raw)

    def _bytes(self, token_id: int) -> bytes:
        piece = self.tokenizer.id_to_token(token_id)
        if piece is None:
            return b""
        if token_id in self.added:
            return piece.encode()
        if self.byte_level:
            table = _byte_decoder()
            if all(c in table for c in piece):
                return bytes(table[c] for c in piece)
        if m := _BYTE_TOKEN.fullmatch(piece):
            return bytes([int(m.group(1), 16)])
        if "▁" in piece:  # SentencePiece's word boundary
            return piece.replace("▁", " ").encode()
        return self.tokenizer.decode([token_id], skip_special_tokens=False).encode()
