"""The engine over the numpy interpreter on a tiny model reproduces ir.reference's greedy tokens."""

from __future__ import annotations

from ferrumc.ir.graph import Module
from ferrumc.ir.reference import generate
from ferrumc.passes.manager import PassManager
from ferrumc.passes.select_logit_rows import SelectLogitRows
from ferrumc.runtime.interpreter_executor import InterpreterExecutor
from ferrumc.tests.runtime.tiny_model import PROMPTS, STEPS, run_greedy


def greedy(tiny, prompts, chunk=512, pages=32):
    module, weights = tiny
    return run_greedy(InterpreterExecutor(module, weights, num_pages=pages), prompts, chunk)


def test_engine_matches_the_reference_greedy_tokens(tiny_llama):
    want = generate(*tiny_llama, PROMPTS[0], STEPS).tokens
    assert greedy(tiny_llama, [PROMPTS[0]])[0] == [want]
    assert greedy(tiny_llama, [PROMPTS[0]], chunk=5)[0] == [want], "chunked prefill"


def test_a_batch_of_different_prompts_equals_each_alone(tiny_llama):
    alone = [greedy(tiny_llama, [p])[0][0] for p in PROMPTS]
    assert greedy(tiny_llama, PROMPTS, chunk=16)[0] == alone
    assert len({tuple(a) for a in alone}) == len(PROMPTS), "prompts lead to different tokens"


def test_preemption_under_page_pressure_keeps_the_tokens(tiny_llama):
    alone = [greedy(tiny_llama, [p])[0][0] for p in PROMPTS[:3]]
    # 3 pages of 16 tokens cannot hold all three as they grow: the latest is preempted
    tokens, stats = greedy(tiny_llama, PROMPTS[:3], pages=3)
    assert tokens == alone
    assert stats.extra["preemptions"] >= 1


def test_a_prefill_graph_computing_only_the_last_rows_gives_the_same_tokens(tiny_llama):
    module, weights = tiny_llama
    prefill = PassManager([SelectLogitRows()]).run(module.graphs["prefill"])
    assert any(n.op.name == "logit_rows" for n in prefill.inputs)
    selected = Module({**module.graphs, "prefill": prefill})
    want = greedy(tiny_llama, PROMPTS, chunk=16)[0]
    assert greedy((selected, weights), PROMPTS, chunk=16)[0] == want
