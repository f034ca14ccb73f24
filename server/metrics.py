"""Prometheus metrics under vLLM's names (so its dashboards work), in a registry of the app's own.

vLLM's: vllm:num_requests_running / _waiting, vllm:kv_cache_usage_perc (a fraction, 0-1),
vllm:prompt_tokens_total, vllm:generation_tokens_total, vllm:time_to_first_token_seconds,
vllm:inter_token_latency_seconds, vllm:e2e_request_latency_seconds,
vllm:request_success_total{finished_reason}, vllm:num_preemptions_total,
vllm:prefix_cache_queries_total / _hits_total (prompt tokens prefilled / served by the prefix
cache), all labelled model_name. As vLLM's, kv_cache_usage_perc counts as free the pages that
only finished requests kept for their prefixes hold (runtime/prefix_cache.py): they give way
whenever a request needs them. Requests by HTTP status: http_requests_total{handler, method,
status}, the name vLLM's server exposes through prometheus-fastapi-instrumentator (here with the
exact status).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from ..runtime.types import EngineStats
from .async_engine import AsyncEngine

# vLLM's buckets.
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0)
TTFT_BUCKETS += (7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0)
ITL_BUCKETS += (7.5, 10.0, 20.0, 40.0, 80.0)
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0)
E2E_BUCKETS += (60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)


class _EngineCollector(Collector):
    """The engine's gauges, read at scrape time."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.engine: AsyncEngine | None = None

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        if self.engine is None:
            return
        stats: EngineStats = self.engine.stats()
        gauges = [
            ("vllm:num_requests_running", "Requests running in the engine.", stats.running),
            ("vllm:num_requests_waiting", "Requests waiting for the engine.", stats.waiting),
            (
                "vllm:kv_cache_usage_perc",
                "Fraction of KV cache pages in use (1 = full).",
                stats.kv_pages_used / max(stats.kv_pages_total, 1),
            ),
        ]
        for name, doc, value in gauges:
            family = GaugeMetricFamily(name, doc, labels=["model_name"])
            family.add_metric([self.model], value)
            yield family
        extra = stats.extra
        hits = extra.get("cached_prompt_tokens", 0.0)
        counters = [
            (
                "vllm:num_preemptions",
                "Sequences preempted for KV pages.",
                extra.get("preemptions", 0.0),
            ),
            (
                "vllm:prefix_cache_queries",
                "Prompt tokens prefilled: computed, or served by the prefix cache.",
                extra.get("prompt_tokens", 0.0) + hits,
            ),
            ("vllm:prefix_cache_hits", "Prompt tokens the prefix cache served.", hits),
        ]
        for name, doc, value in counters:
            family = CounterMetricFamily(name, doc, labels=["model_name"])
            family.add_metric([self.model], value)
            yield family


class Metrics:
    """Every metric the server exports; one instance per app."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.registry = CollectorRegistry()
        r, labels = self.registry, ["model_name"]
        self.engine = _EngineCollector(model)
        r.register(self.engine)
        self.http_requests = Counter(
            "http_requests", "HTTP requests by handler, method and status.",
            ["handler", "method", "status"], registry=r,
        )  # fmt: skip
        self.prompt_tokens = Counter(
            "vllm:prompt_tokens", "Prompt tokens of finished requests.", labels, registry=r
        )
        self.generation_tokens = Counter(
            "vllm:generation_tokens", "Tokens generated.", labels, registry=r
        )
        self.ttft = Histogram(
            "vllm:time_to_first_token_seconds", "Time from request to its first token.",
            labels, buckets=TTFT_BUCKETS, registry=r,
        )  # fmt: skip
        self.itl = Histogram(
            "vllm:inter_token_latency_seconds", "Time between a sequence's successive tokens.",
            labels, buckets=ITL_BUCKETS, registry=r,
        )  # fmt: skip
        self.e2e = Histogram(
            "vllm:e2e_request_latency_seconds", "Time from request to its last token.",
            labels, buckets=E2E_BUCKETS, registry=r,
        )  # fmt: skip
        self.success = Counter(
            "vllm:request_success", "Finished sequences by finish reason.",
            ["model_name", "finished_reason"], registry=r,
        )  # fmt: skip

    def attach(self, engine: AsyncEngine | None) -> None:
        self.engine.engine = engine

    def request(self, handler: str, method: str, status: int) -> None:
        self.http_requests.labels(handler, method, str(status)).inc()

    def first_token(self, seconds: float) -> None:
        self.ttft.labels(self.model).observe(seconds)

    def tokens(self, count: int, seconds_since_last: float | None) -> None:
        """`count` new tokens of one sequence, `seconds_since_last` after its previous ones."""
        self.generation_tokens.labels(self.model).inc(count)
        if seconds_since_last is not None and count:
            for _ in range(count):  # tokens of one step arrive together: share the gap
                self.itl.labels(self.model).observe(seconds_since_last / count)

    def prompt(self, tokens: int) -> None:
        self.prompt_tokens.labels(self.model).inc(tokens)

    def finished(self, reason: str, seconds: float) -> None:
        self.success.labels(self.model, reason).inc()
        self.e2e.labels(self.model).observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
