"""A real `ferrumc serve` (tiny qwen2 checkpoint, numpy interpreter) driven with the official openai SDK."""

from __future__ import annotations

import signal
import threading
import time
import urllib.error
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from ferrumc.tests.server.real_server import RealServer, running_server

KEY = "test-key"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def server(tiny_checkpoint) -> Iterator[RealServer]:
    folder = tiny_checkpoint("qwen2")  # has a ChatML template
    with running_server(
        str(folder), "--interpreter", "--api-key", KEY, "--served-model-name", "tiny"
    ) as s:
        yield s


@pytest.fixture(scope="module")
def client(server: RealServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key=KEY, max_retries=0)


def test_models(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list()] == ["tiny"]


def test_chat_stream_and_whole_agree(client: openai.OpenAI) -> None:
    args = {"model": "tiny", "messages": QUESTION, "temperature": 0, "max_tokens": 12}
    whole = client.chat.completions.create(**args)
    (choice,) = whole.choices
    assert choice.message.role == "assistant" and choice.finish_reason in ("stop", "length")
    assert whole.usage.completion_tokens <= 12
    stream = client.chat.completions.create(
        **args, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == choice.message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == choice.finish_reason
    usage, first = chunks[-1].usage, whole.usage
    assert (usage.prompt_tokens, usage.completion_tokens) == (
        first.prompt_tokens,
        first.completion_tokens,
    )
    # The same prompt again: all of it but its last token comes from the prefix cache.
    assert first.prompt_tokens_details.cached_tokens == 0
    assert usage.prompt_tokens_details.cached_tokens == usage.prompt_tokens - 1


def test_completions_stream_and_whole_agree(client: openai.OpenAI) -> None:
    args = {"model": "tiny", "prompt": "The capital of France is", "temperature": 0}
    whole = client.completions.create(**args, max_tokens=10)
    assert whole.choices[0].finish_reason in ("stop", "length")
    streamed = client.completions.create(**args, max_tokens=10, stream=True)
    assert "".join(c.choices[0].text for c in streamed) == whole.choices[0].text


def test_multi_turn_chat(client: openai.OpenAI) -> None:
    first = client.chat.completions.create(model="tiny", messages=QUESTION, max_tokens=8)
    answer = first.choices[0].message.content
    history = [
        {"role": "system", "content": "You are a helpful assistant."},
        *QUESTION,
        {"role": "assistant", "content": answer},
        {"role": "user", "content": "And of Italy?"},
    ]
    second = client.chat.completions.create(model="tiny", messages=history, max_tokens=8)
    assert (
        second.usage.prompt_tokens > first.usage.prompt_tokens + first.usage.completion_tokens - 2
    )
    assert second.choices[0].message.content is not None


def test_n_2(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model="tiny", messages=QUESTION, n=2, seed=3, temperature=1.0, max_tokens=8
    )
    assert [c.index for c in r.choices] == [0, 1]
    again = client.chat.completions.create(
        model="tiny", messages=QUESTION, n=2, seed=3, temperature=1.0, max_tokens=8
    )
    # A seed makes sampling reproducible, choice by choice.
    assert [c.message.content for c in again.choices] == [c.message.content for c in r.choices]


def test_logprobs(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model="tiny", messages=QUESTION, logprobs=True, top_logprobs=3, max_tokens=6,
        temperature=0,
    )  # fmt: skip
    content = r.choices[0].logprobs.content
    assert content and all(len(t.top_logprobs) == 3 for t in content)
    # Greedy: each chosen token is the most likely one.
    assert all(t.token == t.top_logprobs[0].token for t in content)
    assert all(t.logprob == pytest.approx(t.top_logprobs[0].logprob) for t in content)
    c = client.completions.create(model="tiny", prompt="The", logprobs=2, max_tokens=5)
    assert len(c.choices[0].logprobs.tokens) == len(c.choices[0].logprobs.token_logprobs)


def test_errors_raise_the_right_sdk_exceptions(client: openai.OpenAI, server: RealServer) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tiny", messages=QUESTION, temperature=5)
    assert e.value.param == "temperature"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tiny", messages=QUESTION, tools=[
            {"type": "function", "function": {"name": "f", "parameters": {}}}
        ])  # fmt: skip
    assert e.value.param == "tools"
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="tiny", prompt="word " * 1000)
    assert e.value.code == "context_length_exceeded"
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-4", messages=QUESTION)
    assert "tiny" in e.value.message
    wrong_key = openai.OpenAI(base_url=server.base_url, api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong_key.chat.completions.create(model="tiny", messages=QUESTION)
    with pytest.raises(openai.APIStatusError) as e:
        big = [{"role": "user", "content": "x" * (5 * 1024 * 1024)}]
        client.chat.completions.create(model="tiny", messages=big)
    assert e.value.status_code == 413


def test_disconnects_leave_nothing_running(client: openai.OpenAI, server: RealServer) -> None:
    """20 streams cut after their first token: nothing keeps running, the KV cache is back to idle."""
    idle = server.health()["kv_cache"]

    def cut() -> None:
        stream = client.chat.completions.create(
            model="tiny", messages=QUESTION, max_tokens=200, stream=True, temperature=0.8
        )
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                break  # the first token: hang up
        stream.close()

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: cut(), range(20)))
    deadline = time.monotonic() + 30
    while (h := server.health())["running"] or h["queue_depth"] or h["in_flight"]:
        assert time.monotonic() < deadline, h
        time.sleep(0.1)
    assert h["kv_cache"] == idle


def test_full_queue_is_503_and_sigterm_drains(tiny_checkpoint) -> None:
    folder = tiny_checkpoint("qwen2")
    with running_server(
        str(folder), "--interpreter", "--max-batch-size", "1", "--max-waiting", "0"
    ) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="none", max_retries=0)
        stream = client.completions.create(
            model=str(folder), prompt="The", max_tokens=200, stream=True,
            stream_options={"include_usage": True}, temperature=0.8,
            extra_body={"ignore_eos": True},  # a random model may sample EOS early
        )  # fmt: skip
        chunks = iter(stream)
        first = next(chunks)
        with pytest.raises(openai.InternalServerError) as e:
            client.completions.create(model=str(folder), prompt="The", max_tokens=2)
        assert e.value.status_code == 503
        assert e.value.response.headers["Retry-After"] == "1"
        # SIGTERM mid-stream: the stream still runs to its end, then the server exits 0.
        stopper = threading.Thread(target=server.stop)
        stopper.start()
        rest = list(chunks)
        assert [first, *rest][-1].usage.completion_tokens == 200
        stopper.join(60)
        assert server.process.returncode == 0
        with pytest.raises(urllib.error.URLError):
            server.health()


def _long_stream(client: openai.OpenAI, model: str) -> Iterator[openai.types.Completion]:
    """A 250-token stream (~0.7 s on the interpreter), started: its first chunk is already read."""
    stream = client.completions.create(
        model=model, prompt="The", max_tokens=250, stream=True, extra_body={"ignore_eos": True}
    )
    chunks = iter(stream)
    next(chunks)
    return chunks


def test_second_sigterm_ends_running_and_queued_requests_with_503(tiny_checkpoint) -> None:
    folder = str(tiny_checkpoint("qwen2"))
    args = (folder, "--interpreter", "--max-batch-size", "1")
    with running_server(*args, exit_code=1) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="none", max_retries=0)
        chunks = _long_stream(client, folder)
        with ThreadPoolExecutor(1) as pool:  # queued behind the stream: the batch holds one
            queued = pool.submit(
                client.completions.create, model=folder, prompt="The", max_tokens=250,
                extra_body={"ignore_eos": True},
            )  # fmt: skip
            while server.health()["in_flight"] < 2:
                time.sleep(0.01)
            server.send(signal.SIGTERM)
            time.sleep(0.2)  # two signals pending at once would merge into one
            server.send(signal.SIGTERM)
            with pytest.raises(openai.APIError) as streamed:
                list(chunks)
            with pytest.raises(openai.InternalServerError) as whole:
                queued.result()
        assert streamed.value.code == "server_stopping"
        assert whole.value.status_code == 503 and whole.value.code == "server_stopping"
    log = "".join(server.log)
    assert "SIGTERM: finishing 2 sequences in flight" in log
    assert "SIGTERM again: ending 2 sequences now" in log


def test_drain_timeout_ends_the_stream_with_an_error(tiny_checkpoint) -> None:
    folder = str(tiny_checkpoint("qwen2"))
    with running_server(folder, "--interpreter", "--drain-timeout", "0", exit_code=1) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="none", max_retries=0)
        chunks = _long_stream(client, folder)
        server.send(signal.SIGTERM)
        with pytest.raises(openai.APIError) as streamed:
            list(chunks)
        assert streamed.value.code == "server_stopping"
    assert "the drain timed out: ending 1 sequence now" in "".join(server.log)


def test_ctrl_c_stops_cleanly(tiny_checkpoint) -> None:
    with running_server(str(tiny_checkpoint("qwen2")), "--interpreter") as server:
        assert server.health()["status"] == "ok"
        assert server.stop(sig=signal.SIGINT) == 0


def test_prefix_cache_off_serves_nothing_from_it(tiny_checkpoint) -> None:
    """`--prefix-cache 0`: the same prompt twice is computed twice."""
    folder = tiny_checkpoint("qwen2")
    with running_server(str(folder), "--interpreter", "--prefix-cache", "0") as s:
        client = openai.OpenAI(base_url=s.base_url, api_key="unused", max_retries=0)
        args = {"model": str(folder), "messages": QUESTION, "temperature": 0, "max_tokens": 4}
        for _ in range(2):
            usage = client.chat.completions.create(**args).usage
            assert usage.prompt_tokens > 16 and usage.prompt_tokens_details.cached_tokens == 0
        assert s.health()["kv_cache"]["pages_used"] == 0
