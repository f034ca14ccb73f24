"""POST /v1/completions through aiohttp's test client, over the scripted engine."""

from __future__ import annotations

import pytest

from ferrumc.tests.server.fakes import REPLY_TEXT
from ferrumc.tests.server.test_chat import read_sse

pytestmark = pytest.mark.asyncio

PROMPT = "The capital of France is"


async def post(served, body: dict) -> dict:
    r = await served.client.post("/v1/completions", json=body)
    assert r.status == 200, await r.text()
    return await r.json()


async def test_completion(serve, tokenizer) -> None:
    served = await serve()
    body = await post(served, {"model": "tiny", "prompt": PROMPT, "max_tokens": 50})
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-")
    (choice,) = body["choices"]
    assert choice == {"index": 0, "text": REPLY_TEXT, "logprobs": None, "finish_reason": "stop"}
    prompt = len(tokenizer.encode(PROMPT))
    assert body["usage"]["prompt_tokens"] == prompt


async def test_default_max_tokens_is_openais_16(serve) -> None:
    served = await serve(then_eos=False)
    body = await post(served, {"prompt": PROMPT})
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 16


async def test_stream_matches_whole(serve) -> None:
    served = await serve()
    request = {"prompt": PROMPT, "max_tokens": 50, "stream": True}
    events = await read_sse(await served.client.post("/v1/completions", json=request))
    assert all(e["object"] == "text_completion" for e in events)
    assert "".join(e["choices"][0]["text"] for e in events) == REPLY_TEXT
    assert events[-1]["choices"][0]["finish_reason"] == "stop"
    with_usage = await read_sse(
        await served.client.post(
            "/v1/completions", json={**request, "stream_options": {"include_usage": True}}
        )
    )
    whole = await post(served, {**request, "stream": False})
    assert with_usage[-1]["usage"] == whole["usage"]


async def test_token_id_prompts_several_prompts_and_n(serve, tokenizer) -> None:
    served = await serve()
    ids = tokenizer.encode(PROMPT)
    body = await post(served, {"prompt": [ids, ids[:3]], "n": 2, "max_tokens": 50})
    assert [c["index"] for c in body["choices"]] == [0, 1, 2, 3]
    assert all(c["text"] == REPLY_TEXT for c in body["choices"])
    assert body["usage"]["prompt_tokens"] == len(ids) + 3
    single = await post(served, {"prompt": ids, "max_tokens": 50})
    assert single["usage"]["prompt_tokens"] == len(ids)
    strings = await post(served, {"prompt": ["a b", "c"], "max_tokens": 50})
    assert len(strings["choices"]) == 2


async def test_echo(serve) -> None:
    served = await serve()
    body = await post(served, {"prompt": PROMPT, "echo": True, "max_tokens": 50})
    assert body["choices"][0]["text"] == PROMPT + REPLY_TEXT


async def test_logprobs_legacy_shape(serve, tokenizer) -> None:
    served = await serve()
    body = await post(served, {"prompt": PROMPT, "logprobs": 2, "max_tokens": 50})
    lp = body["choices"][0]["logprobs"]
    reply = tokenizer.encode(REPLY_TEXT, add_bos=False)
    assert "".join(lp["tokens"]) == REPLY_TEXT and len(lp["tokens"]) == len(reply)
    assert all(-1 < v <= 0 for v in lp["token_logprobs"])
    assert all(len(top) == 2 for top in lp["top_logprobs"])
    offsets = [0]
    for token in lp["tokens"][:-1]:
        offsets.append(offsets[-1] + len(token))
    assert lp["text_offset"] == offsets
    streamed = await read_sse(
        await served.client.post(
            "/v1/completions",
            json={"prompt": PROMPT, "logprobs": 2, "max_tokens": 50, "stream": True},
        )
    )
    offsets_streamed = [o for e in streamed for o in e["choices"][0]["logprobs"]["text_offset"]]
    assert offsets_streamed == offsets
