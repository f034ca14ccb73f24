"""The engine's scheduling, stopping and bookkeeping, on a scripted executor."""

from __future__ import annotations

import threading

import pytest

from ferrumc.errors import RequestError
from ferrumc.runtime.engine import Engine, run_to_completion
from ferrumc.runtime.types import Request, SamplingParams
from ferrumc.tests.runtime.fakes import EOS, CharTokenizer, FakeExecutor

TOK = CharTokenizer()
GREEDY = SamplingParams(temperature=0.0)


def request(rid: str, prompt: str, **params: object) -> Request:
    return Request(rid, tuple(TOK.encode(prompt)), SamplingParams(temperature=0.0, **params))  # type: ignore[arg-type]


def engine(executor: FakeExecutor | None = None, **kwargs: object) -> tuple[Engine, FakeExecutor]:
    ex = executor or FakeExecutor()
    return Engine(ex, TOK, **{"max_batch_size": 4, "prefill_chunk_size": 8, **kwargs}), ex  # type: ignore[arg-type]


def test_greedy_generation_streams_tokens_and_text():
    eng, _ = engine()
    eng.add_request(request("a", "abc", max_tokens=4))
    first = eng.step()
    assert [(o.token_ids, o.text, o.finish_reason) for o in first] == [((3,), "d", None)]
    done = run_to_completion(eng)["a"]
    assert done.token_ids == [4, 5, 6] and done.text == "efg" and done.finish_reason == "length"


def test_long_prompts_are_prefilled_in_chunks_of_the_budget():
    eng, ex = engine(prefill_chunk_size=8)
    eng.add_request(request("a", "abcdefghijklmnopqrst", max_tokens=2))  # 20 tokens
    run_to_completion(eng)
    assert ex.prefill_sizes() == [[8], [8], [4]]
    assert len(ex.decode_batches()) == 1


def test_prefill_budget_is_shared_first_come_first_served():
    eng, ex = engine(prefill_chunk_size=8)
    eng.add_request(request("a", "abcdefghij", max_tokens=1))  # 10 tokens
    eng.add_request(request("b", "abcdef", max_tokens=1))  # 6 tokens
    run_to_completion(eng)
    assert ex.prefill_sizes() == [[8], [2, 6]]


def test_all_running_sequences_decode_in_one_call():
    eng, ex = engine()
    for i, prompt in enumerate(["ab", "cde", "f"]):
        eng.add_request(request(f"r{i}", prompt, max_tokens=5))
    done = run_to_completion(eng)
    assert ex.prefill_sizes() == [[2, 3, 1]]
    assert [len(b) for b in ex.decode_batches()] == [3, 3, 3, 3]
    assert done["r1"].text == "fghij"


def test_a_cache_sized_for_a_chunk_caps_the_decode_batch_too():
    """A decode step is one token per sequence in one call: a cache that holds `chunk` tokens
    per call (TVM's) decodes at most `chunk` sequences together."""
    ex = FakeExecutor()
    ex.prefill_chunk_size = 2  # type: ignore[attr-defined]
    eng, _ = engine(ex)
    assert (eng.max_batch_size, eng.prefill_chunk_size) == (2, 2)
    for i, prompt in enumerate(["ab", "c", "d"]):
        eng.add_request(request(f"r{i}", prompt, max_tokens=3))
    done = run_to_completion(eng)
    assert max(len(b) for b in ex.decode_batches()) == 2
    assert max(sum(sizes) for sizes in ex.prefill_sizes()) <= 2
    assert done["r2"].text == "efg"


def test_a_request_arriving_later_joins_the_running_batch():
    eng, ex = engine()
    eng.add_request(request("a", "ab", max_tokens=6))
    eng.step()
    eng.step()
    eng.add_request(request("b", "xy", max_tokens=2))
    done = run_to_completion(eng)
    assert done["a"].text == "efgh" and done["b"].text == "z0"  # a: "cd" came before
    kinds = [(kind, len(ids)) for kind, ids, _ in ex.calls]
    assert kinds[:5] == [
        ("prefill", 1),
        ("decode", 1),
        ("prefill", 1),
        ("decode", 1),
        ("decode", 2),
    ]


def test_abort_frees_the_pages_at_the_next_step():
    eng, ex = engine()
    eng.add_request(request("a", "abcdefgh", max_tokens=50))
    eng.step()
    assert ex.free_pages() < ex.num_pages and eng.stats().kv_pages_used > 0
    eng.abort("a")
    outputs = eng.step()
    assert [(o.request_id, o.finish_reason) for o in outputs] == [("a", "abort")]
    assert ex.free_pages() == ex.num_pages and eng.stats().kv_pages_used == 0
    assert not eng.has_unfinished()
    eng.abort("a")  # already gone: ignored
    assert eng.step() == []


def test_abort_of_a_waiting_request():
    eng, _ = engine(max_batch_size=1)
    eng.add_request(request("a", "ab", max_tokens=3))
    eng.add_request(request("b", "cd", max_tokens=3))
    eng.step()
    assert eng.stats().waiting == 1
    eng.abort("b")
    done = run_to_completion(eng)
    assert done["b"].finish_reason == "abort" and done["b"].token_ids == []
    assert done["a"].finish_reason == "length"


def test_a_prompt_longer_than_the_context_is_refused_with_the_numbers_and_the_fix():
    eng, _ = engine(FakeExecutor(max_context=16))
    with pytest.raises(
        RequestError, match=r"16 tokens.*context window is 16 tokens.*at most 15"
    ) as e:
        eng.add_request(request("a", "abcdefghijklmnop"))
    assert e.value.code == "context_length_exceeded"
    assert not eng.has_unfinished()


def test_generation_stops_when_the_context_is_full():
    eng, _ = engine(FakeExecutor(max_context=16))
    eng.add_request(request("a", "abcdefghijkl"))  # 12 of 16
    done = run_to_completion(eng)["a"]
    assert done.finish_reason == "length" and len(done.token_ids) == 4


def test_max_tokens():
    eng, _ = engine()
    eng.add_request(request("a", "a", max_tokens=1))
    eng.add_request(request("b", "a", max_tokens=7))
    done = run_to_completion(eng)
    assert len(done["a"].token_ids) == 1 and len(done["b"].token_ids) == 7


def script_with_eos(history):
    return EOS if history[-1] == 4 else (history[-1] + 1) % EOS  # ... c d e <eos>


def test_eos_stops_unless_ignored_and_is_counted_but_not_shown():
    eng, _ = engine(FakeExecutor(script=script_with_eos))
    eng.add_request(request("a", "ab", max_tokens=10))
    eng.add_request(request("b", "ab", max_tokens=5, ignore_eos=True))
    done = run_to_completion(eng)
    assert done["a"].token_ids == [2, 3, 4, EOS] and done["a"].text == "cde"
    assert done["a"].finish_reason == "stop"
    assert done["b"].finish_reason == "length" and len(done["b"].token_ids) == 5


def test_stop_token_ids():
    eng, _ = engine()
    eng.add_request(request("a", "ab", stop_token_ids=(5,), max_tokens=10))
    done = run_to_completion(eng)["a"]
    assert done.token_ids == [2, 3, 4, 5] and done.text == "cde" and done.finish_reason == "stop"


def test_stop_strings_spanning_tokens_are_cut_and_never_streamed():
    eng, _ = engine()
    eng.add_request(request("a", "a", stop=("efg",), max_tokens=20))
    texts = []
    while eng.has_unfinished():
        texts += [o.text for o in eng.step()]
    assert "".join(texts) == "bcd"
    assert not any("e" in t for t in texts)


def test_admission_waits_for_pages_and_is_first_come_first_served():
    # 6 pages of 4 tokens; each request needs 3 pages up front (9 tokens + 1)
    eng, ex = engine(FakeExecutor(num_pages=6, page_size=4))
    for rid in ("a", "b", "c"):
        eng.add_request(request(rid, "abcdefghi", max_tokens=2))
    eng.add_request(request("d", "a", max_tokens=2))  # small, but must not overtake c
    eng.step()
    assert eng.stats().running == 2 and eng.stats().waiting == 2
    order = []
    while eng.has_unfinished():
        order += [o.request_id for o in eng.step() if o.finished]
    assert order == ["a", "b", "c", "d"]
    assert ex.free_pages() == 6


def test_out_of_pages_while_decoding_preempts_the_latest_and_recomputes_it():
    alone, _ = engine(FakeExecutor(num_pages=100))
    alone.add_request(request("b", "klmno", max_tokens=12))
    want = run_to_completion(alone)["b"]

    eng, ex = engine(FakeExecutor(num_pages=6, page_size=4))
    eng.add_request(request("a", "abcde", max_tokens=12))
    eng.add_request(request("b", "klmno", max_tokens=12))
    done = run_to_completion(eng)
    assert eng.stats().extra["preemptions"] >= 1
    assert done["b"].token_ids == want.token_ids and done["b"].text == want.text
    assert done["a"].finish_reason == "length" and len(done["a"].token_ids) == 12
    assert ex.free_pages() == 6


def test_stats_count_running_waiting_and_pages():
    eng, ex = engine(max_batch_size=1)
    eng.add_request(request("a", "abcdefg", max_tokens=3))
    eng.add_request(request("b", "ab", max_tokens=3))
    assert eng.stats().waiting == 2
    eng.step()
    s = eng.stats()
    assert (s.running, s.waiting, s.kv_pages_used, s.kv_pages_total) == (1, 1, 2, ex.num_pages)


def test_duplicate_ids_and_bad_parameters_are_refused():
    eng, _ = engine()
    eng.add_request(request("a", "ab"))
    with pytest.raises(RequestError, match="already running"):
        eng.add_request(request("a", "cd"))
    with pytest.raises(RequestError, match="temperature"):
        eng.add_request(Request("b", (1,), SamplingParams(temperature=-1)))
    with pytest.raises(RequestError, match="outside the vocabulary"):
        eng.add_request(Request("c", (1, 999)))
    with pytest.raises(RequestError, match="empty"):
        eng.add_request(Request("d", ()))


def test_seeded_sampling_is_reproducible_whatever_the_batch():
    def run(n_others: int) -> list[int]:
        eng, _ = engine(FakeExecutor(script=lambda h: 0))  # flat-ish logits: sampling decides
        params = SamplingParams(temperature=5.0, seed=42, max_tokens=8)
        for i in range(n_others):
            eng.add_request(Request(f"o{i}", (1, 2), SamplingParams(temperature=1.0, max_tokens=8)))
        eng.add_request(Request("s", (3,), params))
        return run_to_completion(eng)["s"].token_ids

    assert run(0) == run(2) == run(3)


def test_logprobs_come_with_each_token_when_asked():
    eng, _ = engine()
    eng.add_request(request("a", "ab", max_tokens=3, logprobs=2))
    done = run_to_completion(eng)["a"]
    assert [lp.token_id for lp in done.logprobs] == done.token_ids
    assert all(lp.top[0][0] == lp.token_id and len(lp.top) == 2 for lp in done.logprobs)


def test_requests_added_from_other_threads_while_the_engine_runs():
    eng, _ = engine()
    results: dict[str, str] = {}
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            if eng.wait_for_work(timeout=0.05):
                for out in eng.step():
                    results[out.request_id] = results.get(out.request_id, "") + out.text

    worker = threading.Thread(target=loop)
    worker.start()
    adders = [
        threading.Thread(target=lambda i=i: eng.add_request(request(f"r{i}", "ab", max_tokens=3)))
        for i in range(16)
    ]
    for t in adders:
        t.start()
    for t in adders:
        t.join()
    while eng.has_unfinished():
        threading.Event().wait(0.01)
    stop.set()
    worker.join()
    assert results == {f"r{i}": "cde" for i in range(16)}


def test_wait_for_work_returns_when_a_request_arrives():
    eng, _ = engine()
    assert eng.wait_for_work(timeout=0.01) is False
    threading.Timer(0.05, lambda: eng.add_request(request("a", "ab", max_tokens=1))).start()
    assert eng.wait_for_work(timeout=5.0) is True
    assert run_to_completion(eng)["a"].token_ids == [2]


def test_the_context_is_bounded_by_the_cache_too():
    eng, _ = engine(FakeExecutor(num_pages=2, page_size=4, max_context=64))
    assert eng.max_context == 8
    with pytest.raises(RequestError, match="context window is 8 tokens"):
        eng.add_request(request("a", "abcdefgh"))
    eng.add_request(request("b", "abcde"))
    done = run_to_completion(eng)["b"]
    assert done.finish_reason == "length" and done.token_ids == [5, 6, 7]
