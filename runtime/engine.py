"""The generation engine: requests in, token and text deltas out, one `step` at a time (continuous batching).

Each step: take in requests and aborts queued since the last step (any thread may queue them;
only one thread calls `step`), admit waiting requests first come first served while batch
slots and KV pages allow, run one chunked, ragged prefill call (at most prefill_chunk_size
tokens over all sequences), run one decode call for every sequence that was already decoding,
sample, detokenize, check stop conditions, and free the pages of finished sequences, or keep
the last few in the KV cache (runtime/prefix_cache.py): a request whose prompt starts like a
kept or running sequence is forked from it and prefills only the rest (waiting, at the head of
the queue, while a running prefill computes that start).

When a decode or prefill needs more KV pages than are free, kept sequences are dropped first,
oldest first; then the most recently admitted sequence is preempted: its pages are freed and it
goes back to the front of the queue, to be prefilled again later with its prompt and the tokens
it has generated so far (vLLM's recompute preemption); its output stream simply pauses.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Callable, Sequence

import numpy as np

from ..errors import RequestError
from . import sampling
from .detokenizer import IncrementalDetokenizer, StopStrings
from .prefix_cache import PageLedger, PrefixCache, common_prefix
from .sequence import Completion, EngineTokenizer, SequenceState
from .types import EngineStats, Executor, FinishReason, Request, RequestOutput


class Engine:
    """Continuous batching over an injected Executor; `add_request` and `abort` are thread-safe."""

    def __init__(
        self,
        executor: Executor,
        tokenizer: EngineTokenizer,
        *,
        max_batch_size: int = 8,
        prefill_chunk_size: int = 512,
        prefix_cache_size: int = 8,
        seed: int | None = None,
    ) -> None:
        if max_batch_size < 1 or prefill_chunk_size < 1:
            raise ValueError(
                f"need max_batch_size >= 1 and prefill_chunk_size >= 1, "
                f"got {max_batch_size}, {prefill_chunk_size}"
            )
        self.executor = executor
        self.tokenizer = tokenizer
        # A cache built for a fixed batch and chunk (TVM's) says so; never exceed it.
        self.max_batch_size = min(
            max_batch_size, getattr(executor, "max_batch_size", max_batch_size)
        )
        self.prefill_chunk_size = min(
            prefill_chunk_size, getattr(executor, "prefill_chunk_size", prefill_chunk_size)
        )
        # Such a cache holds at most a chunk's tokens per call, and a decode step is one token
        # per sequence.
        if hasattr(executor, "prefill_chunk_size"):
            self.max_batch_size = min(self.max_batch_size, executor.prefill_chunk_size)
        # A sequence may fill the model's window, or the whole cache if that is smaller.
        self.max_context = min(executor.max_context, executor.num_pages * executor.page_size)
        self.eos_token_ids = frozenset(tokenizer.eos_token_ids)
        self._rng = np.random.default_rng(seed)  # seeds requests that bring none
        self._inbox: queue.SimpleQueue[tuple[str, Request | str]] = queue.SimpleQueue()
        self._lock = threading.Lock()  # guards _live, _queued and _counters
        self._live: set[str] = set()  # request ids added and not yet finished
        self._queued = 0  # adds still in the inbox
        self._work = threading.Event()
        self._waiting: deque[SequenceState] = deque()
        self._running: list[SequenceState] = []  # in admission order
        self._by_id: dict[str, SequenceState] = {}
        self._next_seq_id = 0
        self._counters = {
            "preemptions": 0.0,
            "prompt_tokens": 0.0,
            "generated_tokens": 0.0,
            "cached_prompt_tokens": 0.0,
        }
        # Finished sequences kept for their prefixes, where the executor can fork (TVM's cache
        # forks no sliding-window sequence).
        self._fork: Callable[[int, int, int], None] | None = getattr(
            executor, "fork_sequence", None
        )
        windowed = getattr(executor, "sliding_window", None) is not None
        self._prefixes = (
            PrefixCache(prefix_cache_size, executor.page_size)
            if prefix_cache_size > 0 and self._fork is not None and not windowed
            else None
        )
        self._ledger = PageLedger(executor.page_size) if self._prefixes is not None else None
        self._snapshot = (0, 0, executor.num_pages - executor.free_pages())

    # --- any thread ---------------------------------------------------------------------------

    def add_request(self, request: Request) -> None:
        """Queue a request for the next step; raises RequestError if it can never run."""
        prompt, limit = request.prompt_ids, self.max_context
        vocab = self.executor.vocab_size
        if not prompt:
            raise RequestError("the prompt is empty; send at least one token", param="prompt")
        if len(prompt) >= limit:
            raise RequestError(
                f"the prompt has {len(prompt)} tokens but this model's context window is {limit} "
                f"tokens, which must also hold at least one generated token; shorten the prompt "
                f"to at most {limit - 1} tokens (in a chat: drop earlier turns)",
                code="context_length_exceeded",
                param="messages",
            )
        bad = [t for t in prompt if not 0 <= t < vocab]
        if bad:
            raise RequestError(
                f"prompt token ids {bad[:5]} are outside the vocabulary 0..{vocab - 1}",
                param="prompt",
            )
        sampling.validate(request.params, vocab)
        with self._lock:
            if request.request_id in self._live:
                raise RequestError(
                    f"request id {request.request_id!r} is already running; ids must be unique",
                    param="request_id",
                )
            self._live.add(request.request_id)
            self._queued += 1
        self._inbox.put(("add", request))
        self._work.set()

    def abort(self, request_id: str) -> None:
        """Stop a request at the next step, freeing its KV pages; unknown ids are ignored."""
        self._inbox.put(("abort", request_id))
        self._work.set()

    def has_unfinished(self) -> bool:
        with self._lock:
            return bool(self._live)

    def wait_for_work(self, timeout: float | None = None) -> bool:
        """Block until a request is unfinished (or timeout); returns has_unfinished()."""
        self._work.clear()
        if self.has_unfinished():
            return True
        self._work.wait(timeout)
        return self.has_unfinished()

    def stats(self) -> EngineStats:
        """Counts as of the last step (plus requests queued since)."""
        running, waiting, used = self._snapshot
        with self._lock:
            return EngineStats(
                running=running,
                waiting=waiting + self._queued,
                kv_pages_used=used,
                kv_pages_total=self.executor.num_pages,
                extra=dict(self._counters),
            )

    # --- the engine thread --------------------------------------------------------------------

    def clear_prefix_cache(self) -> None:
        """Free every sequence kept for its prefix (before the executor outlives this engine)."""
        while self._evict_prefix():
            pass

    def step(self) -> list[RequestOutput]:
        """Run one scheduling round; returns one output per request that advanced or finished."""
        touched: dict[str, SequenceState] = {}
        self._drain_inbox(touched)
        self._admit(touched)
        decoding = [s for s in self._running if not s.prefilling]
        self._prefill(touched)
        self._decode([s for s in decoding if s.finish_reason is None], touched)
        outputs = [s.take_output() for s in touched.values()]
        used = self.executor.num_pages - self.executor.free_pages() - self._evictable_pages()
        self._snapshot = (len(self._running), len(self._waiting), used)
        return outputs

    def _drain_inbox(self, touched: dict[str, SequenceState]) -> None:
        while True:
            try:
                kind, item = self._inbox.get_nowait()
            except queue.Empty:
                return
            if kind == "add":
                assert isinstance(item, Request)
                with self._lock:
                    self._queued -= 1
                seq = self._new_sequence(item)
                self._waiting.append(seq)
                self._by_id[item.request_id] = seq
            elif (seq := self._by_id.get(str(item))) is not None:
                self._finish(seq, "abort", touched)

    def _new_sequence(self, request: Request) -> SequenceState:
        seed = request.params.seed
        rng = np.random.default_rng(seed if seed is not None else self._rng.integers(2**63))
        return SequenceState(
            request=request,
            ids=list(request.prompt_ids),
            rng=rng,
            detokenizer=IncrementalDetokenizer(self.tokenizer, request.prompt_ids),
            stops=StopStrings(request.params.stop),
        )

    def _admit(self, touched: dict[str, SequenceState]) -> None:
        """Admit from the front of the queue while a slot is open and its prompt's pages are free,
        forking the kept or running sequence that shares the longest prefix with it."""
        while self._waiting and len(self._running) < self.max_batch_size:
            seq = self._waiting[0]
            owed = sum(
                self._pages(len(r.ids)) - self._pages(r.computed)
                for r in self._running
                if r.prefilling
            )
            source, shared, coming = self._fork_source(seq.ids)
            if coming:
                return  # fork it once computed, rather than compute it twice at once
            # A fork shares its source's full pages: only the rest is new.
            need = self._pages(len(seq.ids) + 1) - shared // self.executor.page_size
            while need > self.executor.free_pages() - owed and self._evict_prefix(keep=source):
                pass
            if need > self.executor.free_pages() - owed:
                if source is not None and self._kept(source):
                    self._drop_prefix(source)  # the others were not enough: this one too
                    continue
                if not self._running:  # the whole cache cannot hold it: never wait forever
                    self._finish(seq, "length", touched)
                    continue
                return  # first come, first served: nobody overtakes the head of the queue
            self._waiting.popleft()
            seq.seq_id, self._next_seq_id = self._next_seq_id, self._next_seq_id + 1
            seq.prefilling, seq.computed, seq.cached_tokens = True, shared, shared
            if source is None or self._fork is None:
                self.executor.add_sequence(seq.seq_id)
                if self._ledger is not None:
                    self._ledger.add(seq.seq_id)
            else:
                self._fork(source, seq.seq_id, shared)
                if self._ledger is not None:
                    self._ledger.fork(source, seq.seq_id, shared)
                if self._prefixes is not None and source in self._prefixes:
                    self._prefixes.touch(source)
                with self._lock:
                    self._counters["cached_prompt_tokens"] += shared
            self._running.append(seq)

    def _fork_source(self, ids: Sequence[int]) -> tuple[int | None, int, bool]:
        """The kept or running sequence whose cached tokens share the longest prefix with `ids`
        (at least a page's worth) and how many tokens, (None, 0) if none; and whether a running
        prefill will soon hold more of that prefix (requests admitted together with one system
        prompt)."""
        if self._prefixes is None:
            return None, 0, False
        source, shared = self._prefixes.longest(ids)
        coming = 0
        for run in self._running:
            n = common_prefix(run.ids, ids, len(ids) - 1)
            if n < self._prefixes.min_tokens:
                continue
            if min(n, run.computed) > shared and run.computed >= self._prefixes.min_tokens:
                source, shared = run.seq_id, min(n, run.computed)
            if run.prefilling and n > run.computed:
                coming = max(coming, n)
        return source, shared, coming > shared

    def _remove(self, seq_id: int) -> None:
        self.executor.remove_sequence(seq_id)
        if self._ledger is not None:
            self._ledger.remove(seq_id)

    def _evictable_pages(self) -> int:
        # A running sequence's pages past the ledger's are its own (forks and releases bring
        # the ledger up to date), so they never change this count.
        if self._ledger is None or self._prefixes is None or not len(self._prefixes):
            return 0
        return self._ledger.only_held_by(self._prefixes)

    def _kept(self, seq_id: int) -> bool:
        return self._prefixes is not None and seq_id in self._prefixes

    def _evict_prefix(self, keep: int | None = None) -> bool:
        """Remove the least recently used kept sequence but `keep` from the KV cache; False if
        there was none."""
        victim = self._prefixes.pop_oldest(keep) if self._prefixes is not None else None
        if victim is None:
            return False
        self._remove(victim)
        return True

    def _drop_prefix(self, seq_id: int) -> None:
        assert self._prefixes is not None
        self._prefixes.pop(seq_id)
        self._remove(seq_id)

    def _prefill(self, touched: dict[str, SequenceState]) -> None:
        plan = self._with_room(self._plan_prefill, touched)
        if not plan:
            return
        chunks = [seq.ids[seq.computed : seq.computed + n] for seq, n in plan]
        rows = self.executor.prefill([seq.seq_id for seq, _ in plan], chunks)
        rows = last_token_rows(rows, [n for _, n in plan])
        with self._lock:
            self._counters["prompt_tokens"] += sum(n for _, n in plan)
        for (seq, n), row in zip(plan, rows, strict=True):
            seq.computed += n
            if seq.computed == len(seq.ids):  # the whole prompt is in: its next token is due
                self._sample(seq, row, touched)

    def _plan_prefill(self) -> list[tuple[SequenceState, int]]:
        plan, budget = [], self.prefill_chunk_size
        for seq in self._running:
            if seq.prefilling and budget > 0:
                n = min(len(seq.ids) - seq.computed, budget)
                plan.append((seq, n))
                budget -= n
        return plan

    def _decode(self, decoding: list[SequenceState], touched: dict[str, SequenceState]) -> None:
        def plan() -> list[tuple[SequenceState, int]]:
            return [(s, 1) for s in decoding if s in self._running and s.finish_reason is None]

        batch = [seq for seq, _ in self._with_room(plan, touched)]
        if not batch:
            return
        rows = self.executor.decode([s.seq_id for s in batch], [s.ids[-1] for s in batch])
        for seq, row in zip(batch, rows, strict=True):
            seq.computed += 1
            self._sample(seq, row, touched)

    def _with_room(
        self, plan: Callable[[], list[tuple[SequenceState, int]]], touched: dict[str, SequenceState]
    ) -> list[tuple[SequenceState, int]]:
        """The plan once its new tokens' pages are free, preempting the latest admitted as needed."""
        while True:
            batch = plan()
            need = sum(self._pages(s.computed + n) - self._pages(s.computed) for s, n in batch)
            if need <= self.executor.free_pages():
                return batch
            if self._evict_prefix():  # kept sequences go before anything running
                continue
            victim = self._running[-1]
            if len(self._running) == 1:  # alone and out of pages: the cache is its context
                self._finish(victim, "length", touched)
                continue
            self._preempt(victim)

    def _preempt(self, seq: SequenceState) -> None:
        self._remove(seq.seq_id)
        self._running.remove(seq)
        seq.computed, seq.prefilling = 0, True
        self._waiting.appendleft(seq)
        with self._lock:
            self._counters["preemptions"] += 1

    def _sample(
        self, seq: SequenceState, logits: np.ndarray, touched: dict[str, SequenceState]
    ) -> None:
        touched[seq.request.request_id] = seq
        params = seq.request.params
        prompt, output = seq.ids[: seq.prompt_len], seq.ids[seq.prompt_len :]
        token = sampling.choose(logits, params, prompt, output, seq.rng)
        seq.ids.append(token)
        seq.prefilling = False
        seq.new_ids.append(token)
        if params.logprobs is not None:
            seq.new_logprobs.append(sampling.token_logprob(logits, token, params.logprobs))
        with self._lock:
            self._counters["generated_tokens"] += 1
        if token in params.stop_token_ids or (
            token in self.eos_token_ids and not params.ignore_eos
        ):
            self._finish(seq, "stop", touched)  # the stop token is counted, not shown as text
            return
        seq.new_text.append(seq.stops.push(seq.detokenizer.push(token)))
        at_max = params.max_tokens is not None and seq.num_generated >= params.max_tokens
        if seq.stops.stopped:
            self._finish(seq, "stop", touched)
        elif at_max or len(seq.ids) >= self.max_context:
            self._finish(seq, "length", touched)  # max_tokens reached, or the context is full

    def _finish(
        self, seq: SequenceState, reason: FinishReason, touched: dict[str, SequenceState]
    ) -> None:
        """End a sequence: flush its held-back text (unless aborted) and free its pages now."""
        touched[seq.request.request_id] = seq
        seq.finish_reason = reason
        if reason != "abort" and not seq.stops.stopped:
            seq.new_text.append(seq.stops.push(seq.detokenizer.flush()))
            seq.new_text.append(seq.stops.flush())
            if seq.stops.stopped:
                seq.finish_reason = "stop"
        self._release(seq)

    def _release(self, seq: SequenceState) -> None:
        """Forget a finished sequence and its request id; its pages are freed, or it is kept in
        the prefix cache."""
        if seq in self._running:
            self._running.remove(seq)
            if self._prefixes is not None and seq.computed >= self._prefixes.min_tokens:
                # Kept for a later prompt that starts the same way (evicted when pages run short).
                if self._ledger is not None:
                    self._ledger.grow(seq.seq_id, seq.computed)
                for old in self._prefixes.add(seq.seq_id, seq.ids[: seq.computed]):
                    self._remove(old)
            else:
                self._remove(seq.seq_id)
        elif seq in self._waiting:
            self._waiting.remove(seq)
        self._by_id.pop(seq.request.request_id, None)
        with self._lock:
            self._live.discard(seq.request.request_id)

    def _pages(self, tokens: int) -> int:
        return -(-tokens // self.executor.page_size)


def last_token_rows(logits: np.ndarray, lengths: Sequence[int]) -> np.ndarray:
    """Each chunk's last-token logits [B, V], from an executor returning those or every token's."""
    if logits.shape[0] == len(lengths):
        return logits
    if logits.shape[0] == sum(lengths):
        return logits[np.cumsum(lengths) - 1]
    raise RequestError(
        f"prefill returned {logits.shape[0]} rows of logits for {len(lengths)} chunks of "
        f"{sum(lengths)} tokens; expected one per chunk or one per token"
    )


def run_to_completion(engine: Engine) -> dict[str, Completion]:
    """Step until every request has finished; their outputs merged by request id."""
    done: dict[str, Completion] = {}
    while engine.has_unfinished():
        for out in engine.step():
            done.setdefault(out.request_id, Completion(out.request_id)).add(out)
    return done
