"""Every error the API gives, in OpenAI's shape with the param named; nothing malformed gets a 500."""

from __future__ import annotations

import asyncio
import itertools
import json

import pytest

from ferrumc.server.app import ServerSettings, create_app
from ferrumc.tests.server.fakes import scripted_engine, served_model

pytestmark = pytest.mark.asyncio

USER = [{"role": "user", "content": "hi"}]
CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"


async def error_of(response, status: int) -> dict:
    assert response.status == status, await response.text()
    assert response.headers["Content-Type"].startswith("application/json")
    body = await response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"] and "Traceback" not in body["error"]["message"]
    return body["error"]


@pytest.mark.parametrize(
    "raw",
    [b"{", b"", b"not json", b'{"messages": [}', b"\xff\xfe{}", b"[" * 100_000],
    ids=["truncated", "empty", "text", "broken", "not-utf8", "deep"],
)
async def test_malformed_json_is_400(serve, raw: bytes) -> None:
    served = await serve()
    for path in (CHAT, COMPLETIONS):
        r = await served.client.post(path, data=raw, headers={"Content-Type": "application/json"})
        error = await error_of(r, 400)
        assert error["type"] == "invalid_request_error" and error["code"] == "invalid_json"


@pytest.mark.parametrize("body", [[], None, "x", 3], ids=["array", "null", "string", "number"])
async def test_body_must_be_an_object(serve, body) -> None:
    served = await serve()
    r = await served.client.post(CHAT, data=json.dumps(body))
    assert (await error_of(r, 400))["param"] is None


CHAT_INVALID = [
    ({}, "messages"),
    ({"messages": []}, "messages"),
    ({"messages": "hi"}, "messages"),
    ({"messages": [1]}, "messages[0]"),
    ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "user"}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    (
        {
            "messages": [
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}
            ]
        },
        "messages[0].content[0].type",
    ),
    (
        {"messages": [{"role": "user", "content": [{"type": "text"}]}]},
        "messages[0].content[0].text",
    ),
    ({"messages": [{"role": "user", "content": "x", "name": 3}]}, "messages[0].name"),
    ({"messages": [{"role": "tool", "content": "x", "tool_call_id": "1"}]}, "messages[0].role"),
    (
        {"messages": [{"role": "assistant", "content": "", "tool_calls": [{"id": "1"}]}]},
        "messages[0].tool_calls",
    ),
    ({"temperature": 2.5}, "temperature"),
    ({"temperature": "hot"}, "temperature"),
    ({"temperature": True}, "temperature"),
    ({"top_p": 1.5}, "top_p"),
    ({"presence_penalty": 3}, "presence_penalty"),
    ({"frequency_penalty": -2.5}, "frequency_penalty"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": "10"}, "max_tokens"),
    ({"max_tokens": 1.5}, "max_tokens"),
    ({"max_completion_tokens": -1}, "max_completion_tokens"),
    ({"n": 0}, "n"),
    ({"n": 100}, "n"),
    ({"seed": "x"}, "seed"),
    ({"seed": 2**70}, "seed"),
    ({"stop": 5}, "stop"),
    ({"stop": [""]}, "stop"),
    ({"stop": ["a", 1]}, "stop"),
    ({"stop": [str(i) for i in range(17)]}, "stop"),
    ({"logprobs": "yes"}, "logprobs"),
    ({"top_logprobs": 2}, "top_logprobs"),
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ({"stream": "yes"}, "stream"),
    ({"stream_options": {"include_usage": True}}, "stream_options"),
    ({"stream": True, "stream_options": {"include_usage": 1}}, "stream_options.include_usage"),
    ({"stream": True, "stream_options": []}, "stream_options"),
    ({"model": 5}, "model"),
    ({"user": 5}, "user"),
    ({"chat_template_kwargs": "x"}, "chat_template_kwargs"),
    ({"chat_template_kwargs": {"messages": []}}, "chat_template_kwargs"),
    ({"top_k": -5}, "top_k"),
    ({"stop_token_ids": [-1]}, "stop_token_ids"),
    ({"stop_token_ids": [99999]}, "stop_token_ids"),
]


@pytest.mark.parametrize(("fields", "param"), CHAT_INVALID, ids=[p for _, p in CHAT_INVALID])
async def test_invalid_chat_params_are_named(serve, fields: dict, param: str) -> None:
    served = await serve()
    body = {"messages": USER, **fields} if "messages" not in fields and fields else fields
    error = await error_of(await served.client.post(CHAT, json=body), 400)
    assert error["param"] == param, error
    assert error["type"] == "invalid_request_error"


COMPLETION_INVALID = [
    ({}, "prompt"),
    ({"prompt": []}, "prompt"),
    ({"prompt": [[]]}, "prompt"),
    ({"prompt": [1, "a"]}, "prompt"),
    ({"prompt": [-1]}, "prompt"),
    ({"prompt": [[1], [-2]]}, "prompt[1]"),
    ({"prompt": [300]}, "prompt"),  # outside the vocabulary: the engine says so
    ({"prompt": ""}, "prompt"),  # empty: the engine says so
    ({"prompt": "x", "logprobs": 21}, "logprobs"),
    ({"prompt": "x", "logprobs": True}, "logprobs"),
    ({"prompt": "x", "echo": True, "logprobs": 1}, "echo"),
    ({"prompt": "x", "best_of": 3}, "best_of"),
    ({"prompt": "x", "suffix": "y"}, "suffix"),
    ({"prompt": ["a", "b", "c"], "n": 6}, "n"),
]


@pytest.mark.parametrize(
    ("body", "param"), COMPLETION_INVALID, ids=[str(i) for i in range(len(COMPLETION_INVALID))]
)
async def test_invalid_completion_params_are_named(serve, body: dict, param: str) -> None:
    served = await serve()
    error = await error_of(await served.client.post(COMPLETIONS, json=body), 400)
    assert error["param"] == param, error


UNSUPPORTED = [
    ("tools", [{"type": "function", "function": {"name": "f", "parameters": {}}}]),
    ("tool_choice", "required"),
    ("functions", [{"name": "f"}]),
    ("function_call", {"name": "f"}),
    ("response_format", {"type": "json_object"}),
    ("logit_bias", {"1": 5}),
    ("audio", {"voice": "x", "format": "wav"}),
    ("modalities", ["text", "audio"]),
    ("prediction", {"type": "content", "content": "x"}),
    ("web_search_options", {}),
    ("reasoning_effort", "low"),
    ("verbosity", "low"),
    ("service_tier", "flex"),
    ("store", True),
]


@pytest.mark.parametrize(("name", "value"), UNSUPPORTED, ids=[n for n, _ in UNSUPPORTED])
async def test_known_but_unsupported_params_are_refused(serve, name: str, value) -> None:
    served = await serve()
    error = await error_of(
        await served.client.post(CHAT, json={"messages": USER, name: value}), 400
    )
    assert error["param"] == name and error["code"] == "unsupported_parameter"
    assert name in error["message"]


async def test_context_length_exceeded(serve) -> None:
    served = await serve(max_context=32)
    long = [{"role": "user", "content": "word " * 100}]
    error = await error_of(await served.client.post(CHAT, json={"messages": long}), 400)
    assert error["code"] == "context_length_exceeded" and error["param"] == "messages"
    assert "32" in error["message"]
    error = await error_of(
        await served.client.post(CHAT, json={"messages": USER, "max_tokens": 30}), 400
    )
    assert error["code"] == "context_length_exceeded"
    error = await error_of(
        await served.client.post(COMPLETIONS, json={"prompt": "word " * 100}), 400
    )
    assert error["code"] == "context_length_exceeded" and error["param"] == "prompt"


async def test_unknown_model_is_404_naming_the_served_one(serve) -> None:
    served = await serve()
    for path, body in ((CHAT, {"messages": USER}), (COMPLETIONS, {"prompt": "x"})):
        error = await error_of(await served.client.post(path, json={**body, "model": "gpt-4"}), 404)
        assert error["code"] == "model_not_found" and error["param"] == "model"
        assert "'tiny'" in error["message"] and "'gpt-4'" in error["message"]
    await error_of(await served.client.get("/v1/models/gpt-4"), 404)


async def test_unknown_route_and_method(serve) -> None:
    served = await serve()
    assert (await error_of(await served.client.get("/v1/nothing"), 404))["code"] == "not_found"
    r = await served.client.get(CHAT)
    assert (await error_of(r, 405))["code"] == "method_not_allowed"
    assert r.headers["Allow"] == "POST"


async def test_oversized_body_is_413(serve) -> None:
    served = await serve(ServerSettings(max_body_bytes=2000))
    big = {"messages": [{"role": "user", "content": "x" * 5000}]}
    error = await error_of(await served.client.post(CHAT, json=big), 413)
    assert error["code"] == "request_too_large"


async def test_api_key(serve) -> None:
    served = await serve(ServerSettings(api_key="sekret"))
    client = served.client
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "sekret"}):
        r = await client.post(CHAT, json={"messages": USER}, headers=headers)
        assert (await error_of(r, 401))["code"] == "invalid_api_key"
        await error_of(await client.get("/v1/models", headers=headers), 401)
    ok = {"Authorization": "Bearer sekret"}
    assert (await client.post(CHAT, json={"messages": USER}, headers=ok)).status == 200
    assert (await client.get("/health")).status == 200  # probes need no key
    assert (await client.get("/metrics")).status == 200


async def test_full_queue_is_503_with_retry_after(serve) -> None:
    served = await serve(
        ServerSettings(max_waiting=1, retry_after_s=3),
        then_eos=False,
        delay_s=0.02,
        max_batch_size=1,
    )
    client = served.client
    hold = {"messages": USER, "stream": True, "max_tokens": 200}
    first = await client.post(CHAT, json=hold)
    second = await client.post(CHAT, json=hold)
    assert first.status == 200 and second.status == 200
    r = await client.post(CHAT, json={"messages": USER})
    error = await error_of(r, 503)
    assert r.headers["Retry-After"] == "3" and error["code"] == "server_overloaded"
    assert error["type"] == "server_error"
    first.close()
    second.close()


class _Broken:
    """An engine that fails: in step(), or in stats()."""

    def __init__(self, engine, where: str) -> None:
        self.engine, self.where = engine, where
        self.max_batch_size = engine.max_batch_size

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def step(self):
        if self.where == "step":
            raise RuntimeError("kernel exploded")
        return self.engine.step()

    def stats(self):
        if self.where == "stats":
            raise RuntimeError("secret internals")
        return self.engine.stats()


async def test_engine_failure_is_an_openai_error_not_a_traceback(aiohttp_client, tokenizer) -> None:
    engine, _ = scripted_engine(tokenizer)
    client = await aiohttp_client(create_app(_Broken(engine, "step"), served_model(tokenizer)))
    error = await error_of(await client.post(CHAT, json={"messages": USER}), 500)
    assert error["type"] == "server_error" and error["code"] == "engine_failed"
    r = await client.post(CHAT, json={"messages": USER, "stream": True})
    text = await r.text()
    events = [b[len("data: ") :] for b in text.split("\n\n") if b]
    assert events[-1] == "[DONE]"
    assert json.loads(events[-2])["error"]["code"] == "engine_failed"


async def test_internal_error_is_a_generic_500(aiohttp_client, tokenizer) -> None:
    engine, _ = scripted_engine(tokenizer)
    client = await aiohttp_client(create_app(_Broken(engine, "stats"), served_model(tokenizer)))
    error = await error_of(await client.get("/health"), 500)
    assert error["code"] == "internal_error" and "secret" not in error["message"]


WEIRD = [
    None,
    True,
    False,
    -1,
    0,
    2**70,
    -(2**70),
    0.5,
    1e300,
    "x",
    "",
    [],
    [[]],
    {},
    {"a": 1},
    [1, "a"],
    "\x00",
    "\ud800",
    ["\udfff"],
]
FIELDS = [
    "model", "messages", "prompt", "temperature", "top_p", "n", "stream", "stop", "max_tokens",
    "max_completion_tokens", "presence_penalty", "frequency_penalty", "seed", "logprobs",
    "top_logprobs", "user", "stream_options", "echo", "best_of", "suffix", "logit_bias",
    "tools", "tool_choice", "response_format", "top_k", "min_p", "repetition_penalty",
    "ignore_eos", "stop_token_ids", "chat_template_kwargs", "add_generation_prompt",
]  # fmt: skip


async def test_no_malformed_request_gets_a_500(serve) -> None:
    served = await serve()
    base = {
        CHAT: {"messages": USER, "max_tokens": 4},
        COMPLETIONS: {"prompt": "hi", "max_tokens": 4},
    }
    statuses = set()
    for path, field, value in itertools.product(base, FIELDS, WEIRD):
        r = await served.client.post(path, json={**base[path], field: value})
        statuses.add(r.status)
        if r.status != 200:
            await error_of(r, 400) if r.status == 400 else await error_of(r, 404)
        else:
            await r.read()
    assert statuses <= {200, 400, 404}
    await asyncio.sleep(0)


async def test_half_surrogate_pairs_in_text_are_replaced_not_a_500(serve) -> None:
    served = await serve()
    messages = [{"role": "user", "content": "a\ud800b"}]
    r = await served.client.post(CHAT, json={"messages": messages})
    assert r.status == 200, await r.text()
    r = await served.client.post(COMPLETIONS, json={"prompt": "a\udc00", "echo": True})
    assert (await r.json())["choices"][0]["text"].startswith("a\ufffd")
