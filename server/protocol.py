"""OpenAI request bodies parsed into frozen dataclasses at the boundary; every refusal names its param.

Unknown fields are ignored, as OpenAI does. Known fields that ferrumc cannot honour (tools,
response_format, logit_bias, ...) are refused with a 400 naming them unless they hold the value
that asks for nothing (null, [], "auto", {"type": "text"}), never silently dropped. vLLM's
sampling extensions (top_k, min_p, repetition_penalty, ignore_eos, stop_token_ids,
chat_template_kwargs, add_generation_prompt) are honoured.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..runtime.types import SamplingParams
from .errors import APIError, invalid

MAX_CHOICES = 16  # n, times the number of prompts for /v1/completions
MAX_STOP = 16
MAX_LOGPROBS = 20
COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions

ROLES = ("system", "developer", "user", "assistant")


@dataclass(frozen=True)
class ChatRequest:
    model: str | None
    messages: tuple[Mapping[str, Any], ...]  # as the chat template reads them
    params: SamplingParams
    n: int = 1
    stream: bool = False
    include_usage: bool = False
    logprobs: bool = False
    add_generation_prompt: bool = True
    template_kwargs: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class CompletionRequest:
    model: str | None
    prompts: tuple[str | tuple[int, ...], ...]  # text, or token ids
    params: SamplingParams
    n: int = 1
    stream: bool = False
    include_usage: bool = False
    echo: bool = False
    logprobs: int | None = None


def _accepts(*values: object) -> Callable[[Any], bool]:
    return lambda v: v in values


# Known fields ferrumc cannot honour: name -> (the values that ask for nothing, why not).
UNSUPPORTED_CHAT: dict[str, tuple[Callable[[Any], bool], str]] = {
    "tools": (_accepts(None, []), "tool calling is not supported yet"),
    "tool_choice": (_accepts(None, "none", "auto"), "tool calling is not supported yet"),
    "functions": (_accepts(None, []), "function calling is not supported"),
    "function_call": (_accepts(None, "none", "auto"), "function calling is not supported"),
    "response_format": (
        _accepts(None, {"type": "text"}),
        "structured output (json_object, json_schema) is not supported yet; only text",
    ),
    "logit_bias": (_accepts(None, {}), "logit_bias is not supported"),
    "audio": (_accepts(None), "audio output is not supported"),
    "modalities": (_accepts(None, ["text"]), "only the text modality is supported"),
    "prediction": (_accepts(None), "predicted outputs are not supported"),
    "web_search_options": (_accepts(None), "web search is not supported"),
    "reasoning_effort": (
        _accepts(None),
        "reasoning_effort is not supported; Qwen3 takes chat_template_kwargs.enable_thinking",
    ),
    "verbosity": (_accepts(None), "verbosity is not supported"),
    "service_tier": (_accepts(None, "auto", "default"), "only the default service tier exists"),
    "store": (_accepts(None, False), "ferrumc does not store completions"),
}
UNSUPPORTED_COMPLETION: dict[str, tuple[Callable[[Any], bool], str]] = {
    "suffix": (_accepts(None, ""), "suffix (fill-in-the-middle) is not supported"),
    "logit_bias": UNSUPPORTED_CHAT["logit_bias"],
}


class Fields:
    """A JSON object's fields read with their types and ranges checked; a refusal names the field."""

    def __init__(self, data: object, prefix: str = "") -> None:
        if not isinstance(data, dict):
            where = prefix.rstrip(".") or "the request body"
            raise invalid(
                f"{where} must be a JSON object", prefix.rstrip(".") or None, "invalid_type"
            )
        self.data: dict[str, Any] = data
        self.prefix = prefix  # "messages[0]." for a nested object: errors name the full path

    def get(self, name: str) -> Any:
        return self.data.get(name)

    def boolean(self, name: str, default: bool) -> bool:
        value, name = self.data.get(name), self.prefix + name
        if value is None:
            return default
        if not isinstance(value, bool):
            raise invalid(f"{name} must be true or false, got {value!r}", name, "invalid_type")
        return value

    def string(self, name: str) -> str | None:
        value, name = self.data.get(name), self.prefix + name
        if value is not None and not isinstance(value, str):
            raise invalid(f"{name} must be a string, got {value!r}", name, "invalid_type")
        return value

    def integer(
        self, name: str, default: int | None, lo: int | None = None, hi: int | None = None
    ) -> int | None:
        value, name = self.data.get(name), self.prefix + name
        if value is None:
            return default
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            raise invalid(f"{name} must be an integer, got {value!r}", name, "invalid_type")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise invalid(f"{name} is {value}; it must be {_range(lo, hi)}", name)
        return value

    def number(self, name: str, default: float, lo: float, hi: float) -> float:
        value, name = self.data.get(name), self.prefix + name
        if value is None:
            return default
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise invalid(f"{name} must be a number, got {value!r}", name, "invalid_type")
        if not (math.isfinite(value) and lo <= value <= hi):  # NaN fails too
            raise invalid(f"{name} is {value}; it must be {_range(lo, hi)}", name)
        return float(value)

    def refuse_unsupported(self, table: Mapping[str, tuple[Callable[[Any], bool], str]]) -> None:
        for name, (asks_nothing, why) in table.items():
            if name in self.data and not asks_nothing(self.data[name]):
                raise invalid(
                    f"{name} is not supported by this server: {why}; remove the field",
                    name,
                    "unsupported_parameter",
                )


def _range(lo: float | None, hi: float | None) -> str:
    if lo is not None and hi is not None:
        return f"between {lo} and {hi}"
    return f">= {lo}" if lo is not None else f"<= {hi}"


def _stop(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise invalid(
            f"stop must be a string or an array of strings, got {value!r}", "stop", "invalid_type"
        )
    if len(stops) > MAX_STOP:
        raise invalid(f"stop has {len(stops)} strings; at most {MAX_STOP} are allowed", "stop")
    if any(s == "" for s in stops):
        raise invalid("stop strings must not be empty", "stop")
    return tuple(stops)


def _token_ids(value: object, param: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(
        isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in value
    ):
        raise invalid(f"{param} must be an array of non-negative token ids", param, "invalid_type")
    return tuple(value)


def _stream_options(f: Fields, stream: bool) -> bool:
    """Whether the stream ends with a usage chunk."""
    options = f.get("stream_options")
    if options is None:
        return False
    if not stream:
        raise invalid("stream_options is only allowed when stream is true", "stream_options")
    return Fields(options, "stream_options.").boolean("include_usage", False)


def _sampling(f: Fields, max_tokens: int | None, logprobs: int | None) -> SamplingParams:
    seed = f.integer("seed", None, -(2**63), 2**64 - 1)
    top_k = f.integer("top_k", 0, -1)
    stop_token_ids = f.get("stop_token_ids")
    return SamplingParams(
        temperature=f.number("temperature", 1.0, 0.0, 2.0),
        # top_p 0 (OpenAI allows it) keeps only the most likely token, as a tiny p does.
        top_p=f.number("top_p", 1.0, 0.0, 1.0) or 1e-9,
        top_k=max(top_k or 0, 0),  # vLLM spells "off" -1
        min_p=f.number("min_p", 0.0, 0.0, 1.0),
        repetition_penalty=f.number("repetition_penalty", 1.0, 1e-6, 10.0),
        presence_penalty=f.number("presence_penalty", 0.0, -2.0, 2.0),
        frequency_penalty=f.number("frequency_penalty", 0.0, -2.0, 2.0),
        seed=None if seed is None else seed % 2**64,  # numpy seeds are non-negative
        max_tokens=max_tokens,
        stop=_stop(f.get("stop")),
        stop_token_ids=()
        if stop_token_ids is None
        else _token_ids(stop_token_ids, "stop_token_ids"),
        ignore_eos=f.boolean("ignore_eos", False),
        logprobs=logprobs,
    )


def _content(value: object, where: str) -> str:
    """A message's content: a string, or text parts joined by newlines (as vLLM does)."""
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise invalid(
            f"{where} must be a string or an array of content parts", where, "invalid_type"
        )
    texts = []
    for j, part in enumerate(value):
        p = Fields(part, f"{where}[{j}].")
        kind = p.get("type")
        if kind != "text":
            raise invalid(
                f"{where}[{j}].type is {kind!r}; only text content parts are supported",
                f"{where}[{j}].type",
                "unsupported_content",
            )
        text = p.get("text")
        if not isinstance(text, str):
            raise invalid(
                f"{where}[{j}].text must be a string", f"{where}[{j}].text", "invalid_type"
            )
        texts.append(text)
    return "\n".join(texts)


def _message(value: object, i: int) -> dict[str, Any]:
    where = f"messages[{i}]"
    m = Fields(value, f"{where}.")
    role = m.get("role")
    if role in ("tool", "function"):
        raise invalid(
            f"{where}.role {role!r} is not supported: tool calling is not supported yet",
            f"{where}.role",
            "unsupported_parameter",
        )
    if role not in ROLES:
        raise invalid(
            f"{where}.role must be one of {', '.join(ROLES)}; got {role!r}", f"{where}.role"
        )
    if m.get("tool_calls") not in (None, []):
        raise invalid(
            f"{where}.tool_calls is not supported: tool calling is not supported yet",
            f"{where}.tool_calls",
            "unsupported_parameter",
        )
    if m.get("content") is None:
        raise invalid(
            f"{where}.content is required", f"{where}.content", "missing_required_parameter"
        )
    # Templates know "system"; "developer" is OpenAI's newer name for it.
    message: dict[str, Any] = {
        "role": "system" if role == "developer" else role,
        "content": _content(m.get("content"), f"{where}.content"),
    }
    if (name := m.string("name")) is not None:
        message["name"] = name
    reasoning = m.get("reasoning_content")
    if reasoning is None:
        reasoning = m.get("reasoning")
    if role == "assistant" and isinstance(reasoning, str):
        message["reasoning_content"] = reasoning
    return message


def _choices(n: int, prompts: int = 1) -> None:
    if n * prompts > MAX_CHOICES:
        raise invalid(
            f"n={n} over {prompts} prompt(s) asks for {n * prompts} completions; "
            f"at most {MAX_CHOICES} per request",
            "n",
        )


def parse_chat(body: object) -> ChatRequest:
    """A /v1/chat/completions body -> ChatRequest; raises APIError(400) naming the param."""
    f = Fields(body)
    f.refuse_unsupported(UNSUPPORTED_CHAT)
    messages = f.get("messages")
    if not isinstance(messages, list) or not messages:
        raise invalid("messages must be a non-empty array of messages", "messages", "invalid_type")
    parsed = tuple(_message(m, i) for i, m in enumerate(messages))
    logprobs = f.boolean("logprobs", False)
    top = f.integer("top_logprobs", None, 0, MAX_LOGPROBS)
    if top is not None and not logprobs:
        raise invalid("top_logprobs needs logprobs to be true", "top_logprobs")
    # max_completion_tokens is the current name; max_tokens the deprecated one.
    max_tokens = f.integer("max_completion_tokens", None, 1)
    if max_tokens is None:
        max_tokens = f.integer("max_tokens", None, 1)
    n = f.integer("n", 1, 1, MAX_CHOICES) or 1
    _choices(n)
    stream = f.boolean("stream", False)
    kwargs = f.get("chat_template_kwargs")
    if kwargs is not None and not isinstance(kwargs, dict):
        raise invalid(
            "chat_template_kwargs must be an object", "chat_template_kwargs", "invalid_type"
        )
    f.string("user")  # accepted: it identifies the end user, and changes nothing here
    return ChatRequest(
        model=f.string("model"),
        messages=parsed,
        params=_sampling(f, max_tokens, (top or 0) if logprobs else None),
        n=n,
        stream=stream,
        include_usage=_stream_options(f, stream),
        logprobs=logprobs,
        add_generation_prompt=f.boolean("add_generation_prompt", True),
        template_kwargs=kwargs,
    )


def parse_completion(body: object) -> CompletionRequest:
    """A /v1/completions body -> CompletionRequest; raises APIError(400) naming the param."""
    f = Fields(body)
    f.refuse_unsupported(UNSUPPORTED_COMPLETION)
    prompts = _prompts(f.get("prompt"))
    n = f.integer("n", 1, 1, MAX_CHOICES) or 1
    _choices(n, len(prompts))
    best_of = f.integer("best_of", None, 1)
    if best_of not in (None, n):
        raise invalid(
            f"best_of={best_of} is not supported: ferrumc returns every generated completion; "
            "remove best_of or set it to n",
            "best_of",
            "unsupported_parameter",
        )
    logprobs = f.integer("logprobs", None, 0, MAX_LOGPROBS)
    echo = f.boolean("echo", False)
    if echo and logprobs is not None:
        raise invalid(
            "echo with logprobs would need the prompt's logprobs, which ferrumc does not compute",
            "echo",
            "unsupported_parameter",
        )
    stream = f.boolean("stream", False)
    f.string("user")  # accepted: it identifies the end user, and changes nothing here
    return CompletionRequest(
        model=f.string("model"),
        prompts=prompts,
        params=_sampling(f, f.integer("max_tokens", COMPLETIONS_DEFAULT_MAX_TOKENS, 1), logprobs),
        n=n,
        stream=stream,
        include_usage=_stream_options(f, stream),
        echo=echo,
        logprobs=logprobs,
    )


def _prompts(value: object) -> tuple[str | tuple[int, ...], ...]:
    """prompt: a string, strings, token ids, or lists of token ids."""
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and value:
        if all(isinstance(p, str) for p in value):
            return tuple(value)
        if all(isinstance(p, int) for p in value):
            return (_token_ids(value, "prompt"),)
        if all(isinstance(p, list) and p for p in value):
            return tuple(_token_ids(p, f"prompt[{i}]") for i, p in enumerate(value))
    raise invalid(
        "prompt must be a string, an array of strings, an array of token ids or an array of "
        "arrays of token ids, and not empty",
        "prompt",
        "invalid_type",
    )


def check_model(requested: str | None, served: str) -> None:
    """404 for a model this server does not serve, naming the one it does."""
    if requested is not None and requested != served:
        raise APIError(
            404,
            f"the model {requested!r} does not exist on this server; it serves {served!r}",
            param="model",
            code="model_not_found",
        )
