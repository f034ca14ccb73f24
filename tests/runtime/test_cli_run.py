"""`ferrumc run` and `ferrumc bench` on a tiny checkpoint through the interpreter, driven by CliRunner."""

from __future__ import annotations

import io
import json
import os
import signal

import pytest
from click.testing import CliRunner

from ferrumc.cli import main
from ferrumc.frontend.hf import load_hf
from ferrumc.frontend.model import TokenizerInfo
from ferrumc.runtime.chat_cli import ChatOptions, run_chat
from ferrumc.runtime.chat_template import encode_chat
from ferrumc.runtime.engine import Engine
from ferrumc.runtime.launch import Launched
from ferrumc.runtime.tokenizer import Tokenizer
from ferrumc.runtime.types import SamplingParams
from ferrumc.tests.runtime.fakes import FakeExecutor
from ferrumc.tests.tiny_checkpoints import CHATML_TEMPLATE, build_tokenizer


def chat(folder, stdin: str, *args: str):
    return CliRunner().invoke(
        main, ["run", str(folder), "--interpreter", "--temperature", "0", *args], input=stdin
    )


def test_run_chats_over_several_turns_and_resets(tiny_checkpoint):
    folder = tiny_checkpoint("qwen2")  # has a ChatML template
    result = chat(folder, "Hello there\nHow are you?\n/reset\nHello there\n", "--max-tokens", "5")
    assert result.exit_code == 0, result.output
    answers = [line for line in result.output.split(">>> ")[1:]]
    assert len(answers) == 5  # three answers, the reset notice, the final empty prompt
    assert answers[2].startswith("(conversation cleared)")
    assert answers[0] == answers[3], "after /reset the same question gets the same greedy answer"
    assert answers[0] != answers[1]


def test_run_prompt_is_the_chat_template_with_the_history(tiny_checkpoint):
    folder = tiny_checkpoint("qwen2")
    result = chat(folder, "Hi\nAgain\n", "--max-tokens", "3", "--stats", "--system", "Be brief.")
    assert result.exit_code == 0, result.output
    info = load_hf(folder).tokenizer
    first = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    want = len(encode_chat(Tokenizer(info).hf, info, first))
    assert f"[{want} prompt tokens, 3 generated" in result.output
    # the second prompt holds the first answer too, and starts as the first one did: the
    # prefix cache serves at least the first prompt
    stats = result.output.split("[")[1:]
    counts = [int(part.split(" prompt")[0]) for part in stats]
    assert counts[0] == want and counts[1] > want + 3
    assert "cached" not in stats[0]
    assert int(stats[1].split("(")[1].split(" cached")[0]) >= want, stats[1]


def test_run_without_a_chat_template_uses_a_transcript(tiny_checkpoint):
    result = chat(tiny_checkpoint("llama"), "Hello\n/exit\nnot read\n", "--max-tokens", "2")
    assert result.exit_code == 0, result.output
    assert "plain transcript" in result.output
    assert result.output.count(">>> ") == 2


def test_run_reports_a_too_long_prompt_and_goes_on(tiny_checkpoint):
    folder = tiny_checkpoint("qwen2")  # 256 positions
    result = chat(folder, "word " * 400 + "\nHi\n", "--max-tokens", "2")
    assert result.exit_code == 0, result.output
    assert "context window is 256 tokens" in result.output and "/reset" in result.output
    assert result.output.count(">>> ") == 3


def test_bench_prints_json_figures(tiny_checkpoint):
    args = ["bench", str(tiny_checkpoint("llama")), "--interpreter", "--json"]
    args += ["--prompt-tokens", "20", "--decode-tokens", "4", "--batch", "2"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    figures = json.loads(result.output)
    assert figures["executor"] == "interpreter" and figures["batch"] == 2
    for key in ("prefill_tok_s", "decode_tok_s_batch1", "decode_tok_s_batch", "peak_rss_mib"):
        assert figures[key] > 0
    assert figures["load_to_first_token_s"] >= figures["load_seconds"]


def test_the_interpreter_refuses_a_bundle_by_name(tmp_path):
    (tmp_path / "manifest.json").write_text("{}")
    result = CliRunner().invoke(main, ["run", str(tmp_path), "--interpreter"])
    assert result.exit_code == 1
    assert "compiled bundle" in result.output and "drop --interpreter" in result.output


def test_ctrl_c_stops_the_answer_not_the_chat():
    decodes = 0

    def script(history):
        nonlocal decodes
        decodes += 1
        if decodes == 3:  # the user presses Ctrl-C while the first answer streams
            os.kill(os.getpid(), signal.SIGINT)
        return 50

    info = TokenizerInfo(build_tokenizer().to_str(), chat_template=CHATML_TEMPLATE)
    ex = FakeExecutor(vocab_size=256, num_pages=64, page_size=16, max_context=512, script=script)
    model = Launched("fake", ex, Tokenizer(info), info, "fake", 0.0)
    engine = Engine(ex, model.tokenizer, max_batch_size=1)
    options = ChatOptions(sampling=SamplingParams(temperature=0, max_tokens=20))
    out: list[str] = []
    run_chat(model, engine, options, io.StringIO("first\nsecond\n"), out.append)
    text = "".join(out)
    assert text.count("[stopped]") == 1
    first, second = text.split(">>> ")[1:3]
    assert "[stopped]" in first and "[stopped]" not in second
    assert "token limit" in second  # the second answer ran its full 20 tokens
    assert ex.free_pages() == ex.num_pages


def test_threads_reach_tvm_before_the_bundle_opens(monkeypatch):
    from ferrumc.runtime import launch as launch_module

    seen = {}

    def fake_compiled(ref, options):
        seen["threads"] = os.environ.get("TVM_NUM_THREADS")
        raise RuntimeError("stop here")

    monkeypatch.setenv("TVM_NUM_THREADS", "2")
    monkeypatch.setattr(launch_module, "compiled_available", lambda: True)
    monkeypatch.setattr(launch_module, "_compiled", fake_compiled)
    with pytest.raises(RuntimeError, match="stop here"):
        launch_module.launch("any", launch_module.LaunchOptions(threads=1))
    assert seen["threads"] == "1"


def test_threads_must_be_positive(tiny_checkpoint):
    result = CliRunner().invoke(main, ["bench", str(tiny_checkpoint("llama")), "--threads", "0"])
    assert result.exit_code == 2 and "--threads" in result.output
