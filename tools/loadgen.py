"""Load generator for `ferrumc serve`: N concurrent streaming chat clients, throughput and latency percentiles.

    python tools/loadgen.py --url http://127.0.0.1:8000 --model smollm2 --concurrency 8 --requests 64

Each client sends streaming chat requests back to back (`stream_options.include_usage`) and
records time to first token (first content delta), end-to-end latency and the completion
tokens the server reports. Any non-200 status, error event or missing `[DONE]` is an error.
With `--system-words N` every request starts with the same system message (the first N words of
the shipped held-out text), as an application's fixed instructions do; the report then says
what share of the prompt tokens the server's prefix cache served
(`usage.prompt_tokens_details.cached_tokens`). Prints a table (or JSON with --json) and exits 1
if any request failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field

import aiohttp

HELDOUT = os.path.join(os.path.dirname(__file__), "..", "passes", "data", "heldout.txt")

PROMPTS = (
    "What is the capital of France?",
    "Name three colours of the rainbow.",
    "Write one sentence about the sea.",
    "What is two plus two?",
    "Give me a word that rhymes with cat.",
    "Why is the sky blue? Answer briefly.",
    "Say hello in Spanish.",
    "What do bees make?",
)


@dataclass
class Result:
    ok: bool
    ttft_s: float = 0.0
    e2e_s: float = 0.0
    completion_tokens: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    error: str = ""


@dataclass
class Report:
    concurrency: int
    requests: int
    errors: int
    wall_s: float
    request_throughput: float  # finished requests per second
    output_token_throughput: float  # completion tokens per second, all clients
    ttft_p50_s: float
    ttft_p99_s: float
    e2e_p50_s: float
    e2e_p99_s: float
    mean_completion_tokens: float
    cached_prompt_share: float  # prompt tokens the prefix cache served / all prompt tokens
    load_average: tuple[float, float, float] = field(default_factory=lambda: os.getloadavg())
    error_samples: list[str] = field(default_factory=list)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, round(q / 100 * len(ordered) + 0.5 - 1e-9))
    return ordered[min(rank, len(ordered)) - 1]


async def one_request(
    session: aiohttp.ClientSession, url: str, body: dict, headers: dict[str, str]
) -> Result:
    start = time.perf_counter()
    ttft, usage, done = None, {}, False
    try:
        async with session.post(url, json=body, headers=headers) as r:
            if r.status != 200:
                return Result(False, error=f"HTTP {r.status}: {(await r.text())[:200]}")
            async for raw in r.content:
                line = raw.strip()
                if not line.startswith(b"data: "):
                    continue
                payload = line[len(b"data: ") :]
                if payload == b"[DONE]":
                    done = True
                    break
                chunk = json.loads(payload)
                if "error" in chunk:
                    return Result(False, error=f"error event: {chunk['error']}")
                for choice in chunk.get("choices", []):
                    if ttft is None and choice["delta"].get("content"):
                        ttft = time.perf_counter() - start
                usage = chunk.get("usage") or usage
    except (aiohttp.ClientError, asyncio.TimeoutError) as e:
        return Result(False, error=f"{type(e).__name__}: {e}")
    e2e = time.perf_counter() - start
    if not done:
        return Result(False, error="stream ended without [DONE]")
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
    return Result(
        True,
        ttft if ttft is not None else e2e,
        e2e,
        usage.get("completion_tokens", 0),
        usage.get("prompt_tokens", 0),
        cached,
    )


async def run(args: argparse.Namespace) -> Report:
    url = args.url.rstrip("/") + "/v1/chat/completions"
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    results: list[Result] = []
    counter = iter(range(args.requests))
    system = []
    if args.system_words:
        with open(HELDOUT, encoding="utf-8") as f:
            words = " ".join(f.read().split()[: args.system_words])
        system = [{"role": "system", "content": words}]

    async def client(session: aiohttp.ClientSession) -> None:
        for i in counter:  # clients share the counter: args.requests in all
            body = {
                "model": args.model,
                "messages": [*system, {"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
                "max_tokens": args.max_tokens,
                "temperature": args.temperature,
                "stream": True,
                "stream_options": {"include_usage": True},
            }
            results.append(await one_request(session, url, body, headers))

    timeout = aiohttp.ClientTimeout(total=args.timeout)
    connector = aiohttp.TCPConnector(limit=args.concurrency)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        start = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(args.concurrency)))
        wall = time.perf_counter() - start
    ok = [r for r in results if r.ok]
    ttfts, e2es = [r.ttft_s for r in ok], [r.e2e_s for r in ok]
    tokens = sum(r.completion_tokens for r in ok)
    return Report(
        concurrency=args.concurrency,
        requests=len(results),
        errors=len(results) - len(ok),
        wall_s=round(wall, 3),
        request_throughput=round(len(ok) / wall, 4),
        output_token_throughput=round(tokens / wall, 2),
        ttft_p50_s=round(percentile(ttfts, 50), 4),
        ttft_p99_s=round(percentile(ttfts, 99), 4),
        e2e_p50_s=round(percentile(e2es, 50), 4),
        e2e_p99_s=round(percentile(e2es, 99), 4),
        mean_completion_tokens=round(statistics.fmean([r.completion_tokens for r in ok]), 2)
        if ok
        else 0.0,
        cached_prompt_share=round(
            sum(r.cached_tokens for r in ok) / max(1, sum(r.prompt_tokens for r in ok)), 4
        ),
        error_samples=[r.error for r in results if not r.ok][:5],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--api-key")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--requests", type=int, default=64, help="in all, over every client")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--timeout", type=float, default=600, help="per request, seconds")
    parser.add_argument(
        "--system-words", type=int, default=0, help="a shared system message of N words"
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args()
    report = asyncio.run(run(args))
    if args.json:
        print(json.dumps(asdict(report), indent=1))
    else:
        for key, value in asdict(report).items():
            print(f"{key:24} {value}")
    sys.exit(1 if report.errors else 0)


if __name__ == "__main__":
    main()
