"""Streaming text from streaming tokens: whole characters only, and stop strings cut out (OpenAI semantics).

`IncrementalDetokenizer` is the prefix-offset / read-offset method of vLLM and TGI. Decoding a
token alone loses what depends on its neighbours (SentencePiece's leading space, a UTF-8
character split over byte tokens), so each new token is decoded together with a few tokens
before it and only the text beyond theirs is new; while that text ends in U+FFFD, the
replacement character of an incomplete UTF-8 sequence, it is held back until the character
completes.

`StopStrings` holds back the longest tail of the text that could begin a stop string, so a stop
string split across tokens is still found; the output ends right before it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

# Prompt tokens decoded as context for the first generated token (vLLM's choice).
CONTEXT_TOKENS = 5
REPLACEMENT = "\ufffd"


class Decodes(Protocol):
    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str: ...


class IncrementalDetokenizer:
    """Turns one sequence's generated tokens, pushed one at a time, into text deltas."""

    def __init__(
        self, tokenizer: Decodes, prompt_ids: Sequence[int], skip_special_tokens: bool = True
    ) -> None:
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        # ids[prefix:read] is already emitted context; ids[read:] is not emitted yet.
        self.ids = list(prompt_ids[-CONTEXT_TOKENS:])
        self.prefix = 0
        self.read = len(self.ids)

    def push(self, token_id: int) -> str:
        """Add one token; returns the text it completes ("" while a character is incomplete)."""
        self.ids.append(token_id)
        return self._advance(final=False)

    def flush(self) -> str:
        """The text still held back (an unfinished character shows as U+FFFD): call at the end."""
        return self._advance(final=True)

    def _advance(self, final: bool) -> str:
        before = self._decode(self.ids[self.prefix : self.read])
        text = self._decode(self.ids[self.prefix :])
        if len(text) <= len(before) or (text.endswith(REPLACEMENT) and not final):
            return ""
        # The emitted tokens become the next context; older ones are no longer needed.
        del self.ids[: self.read]
        self.prefix, self.read = 0, len(self.ids)
        return text[len(before) :]

    def _decode(self, ids: list[int]) -> str:
        if not ids:
            return ""
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)


class StopStrings:
    """Filters a stream of text deltas: holds back possible stop-string starts, ends at a stop string."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = tuple(s for s in stops if s)
        self.held = ""
        self.stopped = False

    def push(self, text: str) -> str:
        """Add text; returns what can be emitted. After a stop string is found, `stopped` is True."""
        if self.stopped or not text:
            return ""
        if not self.stops:
            return text
        buffer = self.held + text
        hits = [i for i in (buffer.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.stopped, self.held = True, ""
            return buffer[: min(hits)]
        keep = self._possible_start(buffer)
        self.held = buffer[len(buffer) - keep :] if keep else ""
        return buffer[: len(buffer) - keep]

    def flush(self) -> str:
        """The held-back text, when the sequence ends for another reason."""
        out, self.held = ("" if self.stopped else self.held), ""
        return out

    def _possible_start(self, buffer: str) -> int:
        """Length of the longest tail of buffer that is a proper prefix of some stop string."""
        longest = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(buffer)), longest, -1):
                if buffer.endswith(stop[:n]):
                    longest = n
                    break
        return longest
