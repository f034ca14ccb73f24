"""`ferrumc run`: a terminal chat with the model's chat template, multi-turn history and streamed answers.

Lines starting with / are commands (/reset, /exit). Ctrl-C while the model answers stops that
answer, which stays in the history as far as it got; Ctrl-D (end of input) leaves.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import TextIO

from ..errors import RequestError
from .engine import Completion, Engine
from .launch import Launched
from .types import Request, SamplingParams

HELP = "commands: /reset (forget the conversation), /exit (or Ctrl-D); Ctrl-C stops an answer"
# Models without a chat template continue a plain transcript; a new "User:" line ends the answer.
TRANSCRIPT_STOP = "\nUser:"
CHAT_SAMPLING = SamplingParams(temperature=0.7, top_p=0.95)


@dataclass(frozen=True)
class ChatOptions:
    system: str | None = None
    sampling: SamplingParams = field(default_factory=lambda: CHAT_SAMPLING)
    show_stats: bool = False


class Chat:
    """One conversation: the history, and how it becomes a prompt."""

    def __init__(self, model: Launched, options: ChatOptions) -> None:
        self.model, self.options = model, options
        self.messages: list[dict[str, str]] = []
        self.encode = self._chat_encoder()
        self.reset()

    def reset(self) -> None:
        system = self.options.system
        self.messages = [{"role": "system", "content": system}] if system else []

    def prompt_ids(self) -> list[int]:
        return self.encode(self.messages)

    def _chat_encoder(self) -> Callable[[list[dict[str, str]]], list[int]]:
        info, tokenizer = self.model.tokenizer_info, self.model.tokenizer
        if info.chat_template:
            from .chat_template import ChatEncoder

            encoder = ChatEncoder(tokenizer.hf, info)
            return lambda messages: encoder.encode(messages, add_generation_prompt=True)

        def transcript(messages: list[dict[str, str]]) -> list[int]:
            lines = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
            return tokenizer.encode("\n".join([*lines, "Assistant:"]))

        return transcript

    def sampling(self) -> SamplingParams:
        params = self.options.sampling
        if not self.model.tokenizer_info.chat_template:
            params = replace(params, stop=(*params.stop, TRANSCRIPT_STOP))
        return params


def run_chat(
    model: Launched,
    engine: Engine,
    options: ChatOptions,
    stdin: TextIO | None = None,
    out: Callable[[str], None] | None = None,
) -> None:
    """Read user lines until /exit or end of input, streaming each answer as it is generated."""
    stdin = stdin or sys.stdin
    write = out or _write
    chat = Chat(model, options)
    if not model.tokenizer_info.chat_template:
        write("(this model has no chat template: the conversation is a plain transcript)\n")
    write(f"{model.name} ({model.kind}). {HELP}\n")
    turn = 0
    while True:
        write(">>> ")
        try:
            line = stdin.readline()
        except KeyboardInterrupt:
            write("\n(/exit or Ctrl-D to leave)\n")
            continue
        if not line:  # end of input
            write("\n")
            return
        text = line.rstrip("\n")
        if text.strip() in ("/exit", "/quit", "/bye"):
            return
        if text.strip() == "/reset":
            chat.reset()
            write("(conversation cleared)\n")
            continue
        if text.startswith("/"):
            write(f"unknown command {text.split()[0]}; {HELP}\n")
            continue
        if not text.strip():
            continue
        chat.messages.append({"role": "user", "content": text})
        turn += 1
        try:
            answer = _answer(engine, chat, f"chat-{turn}", write, options.show_stats)
        except RequestError as e:
            chat.messages.pop()
            hint = " Type /reset to start over." if e.code == "context_length_exceeded" else ""
            write(f"error: {e}{hint}\n")
            continue
        chat.messages.append({"role": "assistant", "content": answer.text})


def _answer(
    engine: Engine, chat: Chat, request_id: str, write: Callable[[str], None], show_stats: bool
) -> Completion:
    """Generate one answer, streamed; Ctrl-C aborts it and keeps what came so far."""
    prompt = chat.prompt_ids()
    engine.add_request(Request(request_id, tuple(prompt), chat.sampling()))
    done = Completion(request_id)
    start, first = time.perf_counter(), None
    with _ctrl_c_as_flag() as interrupted:
        while engine.has_unfinished():
            for out in engine.step():
                if first is None and out.token_ids:
                    first = time.perf_counter()
                done.add(out)
                write(out.text)
            if interrupted.is_set() and done.finish_reason is None:
                interrupted.clear()
                engine.abort(request_id)
                write(" [stopped]")
    write("\n")
    if done.finish_reason == "length":
        write("(the answer reached its token limit or the end of the context window)\n")
    if show_stats and first is not None:
        elapsed = time.perf_counter() - first
        rate = (len(done.token_ids) - 1) / elapsed if elapsed > 0 else float("inf")
        cached = f" ({done.cached_tokens} cached)" if done.cached_tokens else ""
        write(
            f"[{len(prompt)} prompt tokens{cached}, {len(done.token_ids)} generated, first token "
            f"{first - start:.2f} s, {rate:.1f} tok/s]\n"
        )
    return done


@contextlib.contextmanager
def _ctrl_c_as_flag() -> Iterator[threading.Event]:
    """Within the block, Ctrl-C sets a flag instead of raising, so a step is never cut in half."""
    flag = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield flag  # signal handlers can only be installed from the main thread
        return
    previous = signal.signal(signal.SIGINT, lambda signum, frame: flag.set())
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()
