"""OpenAI responses from one event stream: the chunks a stream sends, and the whole response folded from them.

`choice_events` turns engine outputs into per-choice events; `chat_chunks` and
`completion_chunks` turn events into the chunks of a streamed response; `fold_chat` and
`fold_completion` merge those same chunks into the non-streamed response. So a streamed and a
non-streamed request can only differ in framing.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Collection, Sequence
from dataclasses import dataclass
from typing import Any

from ..runtime.types import TokenLogprob
from .async_engine import Generation
from .token_text import TokenText

Chunk = dict[str, Any]

# What OpenAI reports for a token of (near) zero probability, instead of -inf (not JSON).
MIN_LOGPROB = -9999.0


@dataclass(frozen=True)
class Meta:
    """The fields every chunk and response of one request repeats."""

    id: str
    created: int
    model: str
    system_fingerprint: str


@dataclass(frozen=True)
class ChoiceEvent:
    """What one engine step added to one choice."""

    index: int
    text: str
    logprobs: tuple[TokenLogprob, ...]
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int  # total so far
    cached_tokens: int = 0  # prompt tokens the prefix cache served


async def choice_events(
    generation: Generation, hidden_tokens: Collection[int]
) -> AsyncIterator[ChoiceEvent]:
    """Events per choice; a stop token (EOS) is counted in usage but, as OpenAI, not shown in logprobs."""
    async for index, out in generation.outputs():
        logprobs = out.logprobs
        if out.finish_reason == "stop" and logprobs and logprobs[-1].token_id in hidden_tokens:
            logprobs = logprobs[:-1]
        yield ChoiceEvent(
            index,
            out.text,
            logprobs,
            out.finish_reason,
            out.prompt_tokens,
            out.completion_tokens,
            out.cached_tokens,
        )


class Usage:
    """Token counts over the choices; a prompt shared by n choices counts once."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.prompt: dict[int, int] = {}
        self.cached: dict[int, int] = {}  # per prompt, the fewest any of its choices was served
        self.completion: dict[int, int] = {}

    def add(self, event: ChoiceEvent) -> None:
        prompt = event.index // self.n
        self.prompt[prompt] = event.prompt_tokens
        self.cached[prompt] = min(self.cached.get(prompt, event.cached_tokens), event.cached_tokens)
        self.completion[event.index] = event.completion_tokens

    def body(self) -> dict[str, Any]:
        prompt, completion = sum(self.prompt.values()), sum(self.completion.values())
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": sum(self.cached.values())},
        }


def _lp(value: float) -> float:
    return value if math.isfinite(value) else MIN_LOGPROB


def chat_logprobs(logprobs: Sequence[TokenLogprob], text: TokenText) -> list[dict[str, Any]]:
    def entry(token_id: int, logprob: float) -> dict[str, Any]:
        return {
            "token": text.text_of(token_id),
            "logprob": _lp(logprob),
            "bytes": list(text.bytes_of(token_id)),
        }

    return [
        {**entry(lp.token_id, lp.logprob), "top_logprobs": [entry(t, v) for t, v in lp.top]}
        for lp in logprobs
    ]


def completion_logprobs(
    logprobs: Sequence[TokenLogprob], text: TokenText, offset: int
) -> dict[str, list[Any]]:
    """The legacy shape; text_offset counts characters from the start of the choice's text."""
    tokens = [text.text_of(lp.token_id) for lp in logprobs]
    offsets = []
    for token in tokens:
        offsets.append(offset)
        offset += len(token)
    return {
        "tokens": tokens,
        "token_logprobs": [_lp(lp.logprob) for lp in logprobs],
        "top_logprobs": [{text.text_of(t): _lp(v) for t, v in lp.top} for lp in logprobs],
        "text_offset": offsets,
    }


def _chunk(meta: Meta, kind: str, choices: list[dict[str, Any]], usage: bool) -> Chunk:
    chunk: Chunk = {
        "id": meta.id,
        "object": kind,
        "created": meta.created,
        "model": meta.model,
        "system_fingerprint": meta.system_fingerprint,
        "choices": choices,
    }
    if usage:  # with include_usage, every chunk has the key and only the last one a value
        chunk["usage"] = None
    return chunk


async def chat_chunks(
    meta: Meta,
    events: AsyncIterator[ChoiceEvent],
    *,
    n: int,
    text: TokenText,
    logprobs: bool,
    include_usage: bool,
) -> AsyncIterator[Chunk]:
    """chat.completion.chunk objects: a role chunk per choice, content deltas, a usage chunk last."""
    usage, started = Usage(n), set()
    async for event in events:
        usage.add(event)
        if event.index not in started:
            started.add(event.index)
            delta = {"role": "assistant", "content": ""}
            choice = {"index": event.index, "delta": delta, "logprobs": None, "finish_reason": None}
            yield _chunk(meta, "chat.completion.chunk", [choice], include_usage)
        if not (event.text or event.logprobs or event.finish_reason):
            continue
        choice = {
            "index": event.index,
            "delta": {"content": event.text} if event.text else {},
            "logprobs": {"content": chat_logprobs(event.logprobs, text), "refusal": None}
            if logprobs
            else None,
            "finish_reason": event.finish_reason,
        }
        yield _chunk(meta, "chat.completion.chunk", [choice], include_usage)
    if include_usage:
        yield {**_chunk(meta, "chat.completion.chunk", [], False), "usage": usage.body()}


async def fold_chat(meta: Meta, chunks: AsyncIterator[Chunk]) -> dict[str, Any]:
    """The chat.completion object the chunks add up to (they must include the usage chunk)."""
    content: dict[int, list[str]] = {}
    logprobs: dict[int, list[Any] | None] = {}
    finish: dict[int, str | None] = {}
    usage = None
    async for chunk in chunks:
        usage = chunk.get("usage") or usage
        for choice in chunk["choices"]:
            i = choice["index"]
            content.setdefault(i, []).append(choice["delta"].get("content", ""))
            finish[i] = choice["finish_reason"] or finish.get(i)
            if choice["logprobs"] is not None:
                logprobs.setdefault(i, []).extend(choice["logprobs"]["content"])  # type: ignore[union-attr]
    choices = [
        {
            "index": i,
            "message": {"role": "assistant", "content": "".join(content[i]), "refusal": None},
            "logprobs": {"content": logprobs[i], "refusal": None} if i in logprobs else None,
            "finish_reason": finish[i],
        }
        for i in sorted(content)
    ]
    return {**_chunk(meta, "chat.completion", choices, False), "usage": usage}


async def completion_chunks(
    meta: Meta,
    events: AsyncIterator[ChoiceEvent],
    *,
    n: int,
    text: TokenText,
    logprobs: int | None,
    include_usage: bool,
    echo: Sequence[str] | None = None,
) -> AsyncIterator[Chunk]:
    """text_completion objects, one per event with something in it; a usage chunk last.

    With `echo`, each choice's text starts with its prompt's text (echo[prompt index]).
    """
    usage, offsets = Usage(n), {}
    async for event in events:
        usage.add(event)
        piece = event.text
        if event.index not in offsets:
            offsets[event.index] = 0
            if echo is not None:
                piece = echo[event.index // n] + piece
                offsets[event.index] = len(echo[event.index // n])
        lp = None
        if logprobs is not None:
            lp = completion_logprobs(event.logprobs, text, offsets[event.index])
        offsets[event.index] += len(event.text)
        if not (piece or event.logprobs or event.finish_reason):
            continue
        choice = {
            "index": event.index,
            "text": piece,
            "logprobs": lp,
            "finish_reason": event.finish_reason,
        }
        yield _chunk(meta, "text_completion", [choice], include_usage)
    if include_usage:
        yield {**_chunk(meta, "text_completion", [], False), "usage": usage.body()}


async def fold_completion(meta: Meta, chunks: AsyncIterator[Chunk]) -> dict[str, Any]:
    """The text_completion object the chunks add up to (they must include the usage chunk)."""
    texts: dict[int, list[str]] = {}
    logprobs: dict[int, dict[str, list[Any]]] = {}
    finish: dict[int, str | None] = {}
    usage = None
    async for chunk in chunks:
        usage = chunk.get("usage") or usage
        for choice in chunk["choices"]:
            i = choice["index"]
            texts.setdefault(i, []).append(choice["text"])
            finish[i] = choice["finish_reason"] or finish.get(i)
            if choice["logprobs"] is not None:
                merged = logprobs.setdefault(i, {k: [] for k in choice["logprobs"]})
                for key, values in choice["logprobs"].items():
                    merged[key].extend(values)
    choices = [
        {
            "index": i,
            "text": "".join(texts[i]),
            "logprobs": logprobs.get(i),
            "finish_reason": finish[i],
        }
        for i in sorted(texts)
    ]
    return {**_chunk(meta, "text_completion", choices, False), "usage": usage}
