"""The command line: inspect and --emit-ir on real checkpoints, and one clear line for bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from ferrumc.cli import main
from ferrumc.ir import parse_module, verify_module
from ferrumc.tests.frontend.tiny_gguf import Q, TinyGGUF, write_tiny_gguf


def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


def assert_clean_error(result, *needles: str) -> None:
    """Non-zero exit, one `error:` line naming the problem, no traceback."""
    assert result.exit_code != 0
    assert result.output.startswith("error: "), result.output
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in result.output, result.output


def test_inspect_reports_architecture_parameters_and_tokenizer(tiny_checkpoint) -> None:
    result = invoke("inspect", str(tiny_checkpoint("qwen3_moe")))
    assert result.exit_code == 0, result.output
    assert "architecture:  qwen3_moe" in result.output
    assert "experts:       4 (top 2)" in result.output
    assert "tokenizer:     vocab 256" in result.output
    params = int(result.output.split("parameters:")[1].split()[0].replace(",", ""))
    assert params > 50_000


def test_emit_ir_prints_a_module_that_parses_and_verifies(tiny_checkpoint, tmp_path: Path) -> None:
    result = invoke(
        "compile",
        str(tiny_checkpoint("qwen3")),
        "--emit-ir",
        "--dtype",
        "f16",
        "--dump-ir",
        str(tmp_path),
    )
    assert result.exit_code == 0, result.output
    module = verify_module(parse_module(result.output))
    assert sorted(module.graphs) == ["decode", "prefill"]
    assert "paged_attention" in result.output and "attention(" not in result.output.replace(
        "paged_attention(", ""
    )
    dumps = sorted(p.name for p in tmp_path.iterdir())
    assert dumps[0] == "00-input.ir" and "decode" in dumps and "prefill" in dumps


def test_missing_config_json(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"")
    assert_clean_error(invoke("inspect", str(tmp_path)), "config.json")


def test_unknown_model_type(tiny_checkpoint, tmp_path: Path) -> None:
    folder = shutil.copytree(tiny_checkpoint("llama"), tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "gpt_neox"
    (folder / "config.json").write_text(json.dumps(config))
    assert_clean_error(
        invoke("compile", str(folder), "--emit-ir"), "gpt_neox", "llama", "qwen3_moe"
    )


def test_truncated_safetensors(tiny_checkpoint, tmp_path: Path) -> None:
    folder = shutil.copytree(tiny_checkpoint("llama"), tmp_path / "m")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    assert_clean_error(invoke("inspect", str(folder)), "model.safetensors", "re-download")


def test_unsupported_gguf_tensor_type(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    write_tiny_gguf(
        path, TinyGGUF(hidden=256, heads=4, ffn=256, overrides={"blk.0.ffn_up.weight": Q.Q5_K})
    )
    assert_clean_error(invoke("inspect", str(path)), "blk.0.ffn_up.weight", "Q5_K", str(path))


def test_model_not_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert_clean_error(invoke("inspect", "/nonexistent/model"), "not found", "Fix:")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    assert_clean_error(
        invoke("inspect", "someorg/missing-model"), "someorg/missing-model", "ferrumc pull"
    )


@pytest.mark.parametrize("dtype", ["f32", "bf16"])
def test_emit_ir_on_gguf(tmp_path: Path, dtype: str) -> None:
    path = tmp_path / "m.gguf"
    write_tiny_gguf(path, TinyGGUF())
    result = invoke("compile", str(path), "--emit-ir", "--dtype", dtype)
    assert result.exit_code == 0, result.output
    assert f"kvcache<layers=2,kv_heads=2,head_dim=16,{dtype}>" in result.output
