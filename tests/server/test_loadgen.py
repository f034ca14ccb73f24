"""tools/loadgen.py against the app over the scripted engine: every request counted, no errors."""

from __future__ import annotations

import argparse

import pytest

from ferrumc.server.app import ServerSettings, create_app
from ferrumc.tests.server.fakes import scripted_engine, served_model
from ferrumc.tools import loadgen


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert loadgen.percentile(values, 50) == 50.0
    assert loadgen.percentile(values, 99) == 99.0
    assert loadgen.percentile([3.0], 99) == 3.0
    assert loadgen.percentile([], 50) == 0.0


@pytest.mark.asyncio
async def test_loadgen_run(aiohttp_server, tokenizer) -> None:
    engine, _ = scripted_engine(tokenizer, then_eos=False, max_batch_size=4)
    app = create_app(engine, served_model(tokenizer), ServerSettings(api_key="k"))
    server = await aiohttp_server(app)
    args = argparse.Namespace(
        url=str(server.make_url("/")), model="tiny", api_key="k", concurrency=8,
        requests=24, max_tokens=5, temperature=0.0, timeout=60, system_words=0,
    )  # fmt: skip
    report = await loadgen.run(args)
    assert (report.requests, report.errors) == (24, 0)
    assert report.mean_completion_tokens == 5
    assert 0 < report.ttft_p50_s <= report.ttft_p99_s <= report.e2e_p99_s
    assert report.request_throughput > 0
    assert report.cached_prompt_share == 0  # the scripted executor cannot fork
    args.system_words, args.requests = 50, 4
    shared = await loadgen.run(args)
    assert (shared.requests, shared.errors) == (4, 0)
    args.system_words, args.requests = 0, 24
    args.api_key = "wrong"
    bad = await loadgen.run(args)
    assert bad.errors == 24 and "HTTP 401" in bad.error_samples[0]
