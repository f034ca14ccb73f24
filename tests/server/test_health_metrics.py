"""GET /health, /metrics and /v1/models; disconnects free the KV cache; the event loop never blocks."""

from __future__ import annotations

import asyncio
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ferrumc.tests.server.test_chat import QUESTION

pytestmark = pytest.mark.asyncio


async def health(client) -> dict:
    r = await client.get("/health")
    assert r.status == 200
    return await r.json()


async def test_health(serve) -> None:
    served = await serve()
    body = await health(served.client)
    assert body["status"] == "ok" and body["model"] == "tiny" and body["target"] == "test"
    assert body["uptime_s"] >= 0 and body["queue_depth"] == 0 and body["running"] == 0
    assert body["kv_cache"] == {"pages_used": 0, "pages_total": 64, "usage": 0.0}


async def test_models(serve) -> None:
    served = await serve()
    body = await (await served.client.get("/v1/models")).json()
    assert body["object"] == "list"
    (card,) = body["data"]
    assert card["id"] == "tiny" and card["object"] == "model" and card["owned_by"] == "ferrumc"
    assert (await (await served.client.get("/v1/models/tiny")).json()) == card


def samples(text: str) -> dict[tuple[str, tuple], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_metrics_use_vllm_names(serve) -> None:
    served = await serve()
    client = served.client
    body = await (await client.post("/v1/chat/completions", json={"messages": QUESTION})).json()
    await client.post("/v1/chat/completions", json={"messages": "bad"})
    r = await client.get("/metrics")
    assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
    found = samples(await r.text())
    model = (("model_name", "tiny"),)
    assert found["vllm:num_requests_running", model] == 0
    assert found["vllm:num_requests_waiting", model] == 0
    assert found["vllm:kv_cache_usage_perc", model] == 0
    assert found["vllm:prompt_tokens_total", model] == body["usage"]["prompt_tokens"]
    assert found["vllm:generation_tokens_total", model] == body["usage"]["completion_tokens"]
    assert found["vllm:prefix_cache_queries_total", model] == body["usage"]["prompt_tokens"]
    assert found["vllm:prefix_cache_hits_total", model] == 0  # this executor cannot fork
    assert found["vllm:time_to_first_token_seconds_count", model] == 1
    assert (
        found["vllm:inter_token_latency_seconds_count", model]
        == body["usage"]["completion_tokens"] - 1
    )
    assert found["vllm:e2e_request_latency_seconds_count", model] == 1
    assert found["vllm:request_success_total", (("finished_reason", "stop"), *model)] == 1
    chat = (("handler", "/v1/chat/completions"), ("method", "POST"))
    assert found["http_requests_total", (*chat, ("status", "200"))] == 1
    assert found["http_requests_total", (*chat, ("status", "400"))] == 1


async def test_disconnects_free_the_kv_cache(serve) -> None:
    """20 streams cut after their first token leave nothing running and the cache at its idle use."""
    served = await serve(then_eos=False, delay_s=0.005, max_batch_size=4)
    client = served.client
    idle = (await health(client))["kv_cache"]

    async def cut_after_first_token() -> None:
        request = {"messages": QUESTION, "stream": True, "max_tokens": 200}
        async with client.post("/v1/chat/completions", json=request) as r:
            assert r.status == 200
            async for line in r.content:
                if line.startswith(b"data: ") and b'"content": ""' not in line:
                    break  # the first token is here: hang up
        # leaving the block closes the connection mid-stream

    await asyncio.gather(*(cut_after_first_token() for _ in range(20)))
    deadline = time.monotonic() + 10
    while True:
        body = await health(client)
        if (body["running"], body["queue_depth"], body["in_flight"]) == (0, 0, 0):
            break
        assert time.monotonic() < deadline, body
        await asyncio.sleep(0.05)
    assert body["kv_cache"] == idle
    assert served.executor.lengths == {}  # every sequence removed from the executor
    # Far fewer tokens were generated than 20 full answers of 200 would have needed.
    found = samples(await (await client.get("/metrics")).text())
    assert found["vllm:generation_tokens_total", (("model_name", "tiny"),)] < 20 * 50


async def test_generation_never_blocks_the_event_loop(serve) -> None:
    served = await serve(then_eos=False, delay_s=0.05, max_batch_size=1)
    client = served.client
    slow = asyncio.ensure_future(
        client.post("/v1/chat/completions", json={"messages": QUESTION, "max_tokens": 20})
    )
    await asyncio.sleep(0.2)  # the engine thread is mid-generation (about 1 s in all)
    start = time.monotonic()
    body = await health(client)
    assert time.monotonic() - start < 0.5
    assert body["running"] == 1
    r = await slow
    assert r.status == 200 and (await r.json())["usage"]["completion_tokens"] == 20


async def test_requests_are_served_concurrently_first_come_first_served(serve) -> None:
    served = await serve(then_eos=False, delay_s=0.01, max_batch_size=2)
    client = served.client

    async def ask(i: int) -> tuple[int, float]:
        r = await client.post("/v1/completions", json={"prompt": f"q{i}", "max_tokens": 10})
        assert r.status == 200
        await r.json()
        return i, time.monotonic()

    done = await asyncio.gather(*(ask(i) for i in range(6)))
    assert len(done) == 6
    body = await health(client)
    assert body["kv_cache"]["pages_used"] == 0
