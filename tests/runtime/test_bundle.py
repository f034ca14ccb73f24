"""Bundles: what compile writes, what a load refuses (each with its fix), the compile cache, the CLI.

The bundle under test is the tiny Llama compiled once per session (tests/bundle_fixtures.py);
each damaging test works on its own copy.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from ferrumc.cli import main
from ferrumc.codegen.bundle import MANIFEST, digest, read_manifest, verify_bundle
from ferrumc.errors import BundleError, CodegenError
from ferrumc.frontend.hf import load_hf

if importlib.util.find_spec("tvm") is None:
    pytest.skip("needs TVM (the `compile` extra)", allow_module_level=True)

FIX = "ferrumc compile"  # every refusal names the command that fixes it


@pytest.fixture(scope="module")
def llama_bundle(compiled_bundle) -> Path:
    return compiled_bundle("llama")


@pytest.fixture
def bundle(llama_bundle: Path, tmp_path: Path) -> Path:
    """A private copy to damage."""
    return Path(shutil.copytree(llama_bundle, tmp_path / "llama.ferrum"))


def resign(bundle: Path, edit: Callable[[dict], None]) -> None:
    """Edit the manifest and recompute its hash, as a bundle from elsewhere would look."""
    path = bundle / MANIFEST
    body = json.loads(path.read_text())
    body.pop("sha256")
    edit(body)
    body["sha256"] = digest(body)
    path.write_text(json.dumps(body))


def open_fails(bundle: Path, *match: str) -> str:
    from ferrumc.runtime.loader import open_bundle

    with pytest.raises(BundleError) as info:
        open_bundle(bundle)
    message = str(info.value)
    for text in match:
        assert text in message, message
    return message


# --- what compile writes -------------------------------------------------------------------------


def test_manifest_records_the_model_the_target_and_the_compile(llama_bundle, tiny_checkpoint):
    m = read_manifest(llama_bundle)
    loaded = load_hf(tiny_checkpoint("llama"))
    assert m.model["config"]["num_layers"] == loaded.config.num_layers
    assert m.options == {
        "dtype": "f32",
        "quantize": None,
        "int4_activations": "int8",
        "kv_dtype": None,
    }
    assert m.target["name"] == "llvm" and m.target["target"]["kind"] == "llvm"
    assert set(m.entry_points) == {"prefill", "decode"}
    # The compiled prefill projects only the rows the runtime asks for (select-logit-rows).
    assert m.entry_points["prefill"]["inputs"] == ["tokens", "positions", "kv_cache", "logit_rows"]
    assert m.kv_cache["num_layers"] == 2 and m.kv_cache["create_function"] == "create_kv_cache"
    assert m.library["kernels"] > 0
    assert set(m.timings) == {"load", "optimize", "lift", "lower", "weights", "build"}
    assert m.model["identity"]["folder"]["model.safetensors"]
    # Derived weights (fused qkv, gate_up) in the library's order, 64-byte aligned.
    names = [p.name for p in m.params]
    assert "layers.0.attn.qkv.weight" in names and "layers.0.attn.q.weight" not in names
    assert all(p.offset % 64 == 0 for p in m.params)


def test_opened_bundle_rebuilds_config_and_tokenizer(llama_bundle, tiny_checkpoint):
    from ferrumc.runtime.loader import open_bundle

    loaded = load_hf(tiny_checkpoint("llama"))
    opened = open_bundle(llama_bundle)
    assert opened.config == loaded.config
    assert opened.tokenizer_info == loaded.tokenizer
    assert opened.name == Path(tiny_checkpoint("llama")).name
    ex = opened.executor
    assert (ex.vocab_size, ex.max_context) == (256, 512)


def test_weights_are_memory_mapped_not_copied(llama_bundle):
    from ferrumc.runtime.loader import open_bundle

    ex = open_bundle(llama_bundle).executor
    # Every tensor the VM was given points into a mapping of the shard file, not into a copy.
    shard = str((llama_bundle / "params-00000.bin").resolve())
    assert {_mapped_file(t.data_ptr()) for t in ex.library.params} == {shard}


def _mapped_file(address: int) -> str | None:
    """The file mapped at `address` in this process (Linux /proc/self/maps), if any."""
    for line in Path("/proc/self/maps").read_text().splitlines():
        span, *rest = line.split()
        lo, hi = (int(x, 16) for x in span.split("-"))
        if lo <= address < hi:
            return rest[-1] if len(rest) == 5 else None
    return None


def test_verify_checks_every_weight(bundle):
    assert verify_bundle(bundle).name == read_manifest(bundle).name
    m = read_manifest(bundle)
    last = m.params[-1]
    with (bundle / last.shard).open("r+b") as f:
        f.seek(last.offset)
        byte = f.read(1)
        f.seek(last.offset)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(BundleError, match=rf"weight '{last.name}' sha256 mismatch.*{FIX}"):
        verify_bundle(bundle)


# --- what a load refuses ---------------------------------------------------------------------------


def test_truncated_shard(bundle):
    shard = bundle / "params-00000.bin"
    with shard.open("r+b") as f:
        f.truncate(shard.stat().st_size - 100)
    open_fails(bundle, "params-00000.bin: weight shard truncated", FIX)


def test_edited_manifest(bundle):
    path = bundle / MANIFEST
    path.write_text(path.read_text().replace('"dtype": "f32"', '"dtype": "f16"', 1))
    open_fails(bundle, "manifest was edited or corrupted", FIX)


def test_missing_library(bundle):
    (bundle / "model.so").unlink()
    open_fails(bundle, "model.so: compiled library is missing", FIX)


def test_replaced_library(bundle):
    (bundle / "model.so").write_bytes(b"\x7fELF not really")
    open_fails(bundle, "library sha256 mismatch", FIX)


def test_missing_tokenizer(bundle):
    (bundle / "tokenizer.json").unlink()
    open_fails(bundle, "tokenizer.json: tokenizer is missing", FIX)


def test_unknown_format_version(bundle):
    resign(bundle, lambda body: body.update(format_version=99))
    open_fails(bundle, "bundle format 99, this ferrumc reads format 1", FIX)


def test_other_ferrumc_version(bundle):
    resign(bundle, lambda body: body.update(ferrumc_version="7.3.0"))
    open_fails(bundle, "compiled by ferrumc 7.3.0", "major.minor must match", FIX)


def test_other_tvm_version(bundle):
    resign(bundle, lambda body: body.update(tvm_version="0.26.0"))
    open_fails(bundle, "compiled with TVM 0.26.0", FIX, "apache-tvm==0.26.0")


def test_cuda_bundle_on_a_cpu_only_host(bundle):
    import tvm

    if tvm.cuda().exist:
        pytest.skip("this host has a CUDA device")
    resign(bundle, lambda body: body["target"].update(name="cuda", device="cuda"))
    open_fails(
        bundle, "compiled for cuda (device cuda), but this machine has no cuda device", "-t llvm"
    )


def test_other_cpu_architecture(bundle):
    resign(bundle, lambda body: body["target"].update(machine="riscv64"))
    open_fails(bundle, "compiled for riscv64 CPUs", "-t llvm")


def test_missing_cpu_features(bundle, monkeypatch):
    from ferrumc.runtime import loader

    # Compiled where AVX-512 exists, opened where it does not.
    resign(bundle, lambda body: body["target"].update(features=["avx2", "avx512f", "avx512bw"]))
    monkeypatch.setattr(loader, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
    open_fails(bundle, "compiled for a CPU with avx512f, avx512bw, which this CPU lacks", "-t llvm")


def test_not_a_bundle(tmp_path):
    open_fails(tmp_path, f"no {MANIFEST}", FIX)


# --- the compile cache ---------------------------------------------------------------------------


def test_open_model_loads_from_the_cache_without_compiling(
    llama_bundle, tiny_checkpoint, monkeypatch
):
    from ferrumc.codegen import compile as compile_module
    from ferrumc.runtime.loader import open_model

    def no_compile(*args, **kwargs):
        raise AssertionError("compiled although the cache holds the bundle")

    monkeypatch.setattr(compile_module, "compile_model", no_compile)
    opened = open_model(str(tiny_checkpoint("llama")), progress=False)
    assert opened.path == llama_bundle
    assert llama_bundle.parent.name == "bundles" and len(llama_bundle.name) == 64


def test_a_bundle_path_opens_as_it_is(llama_bundle):
    from ferrumc.runtime.loader import open_model

    assert open_model(str(llama_bundle)).path == llama_bundle


def test_cache_key_follows_model_target_options_and_versions(tmp_path):
    from ferrumc.codegen.cache import cache_key

    base = dict(
        identity={"file": "m.gguf", "sha256": "ab"},
        target={"name": "llvm", "features": ["avx2"]},
        options={"dtype": "f32"},
        versions={"ferrumc": "0.1.0", "tvm": "0.27.0"},
    )
    key = cache_key(**base)
    assert cache_key(**base) == key
    for field, value in [
        ("identity", {"file": "m.gguf", "sha256": "cd"}),
        ("target", {"name": "llvm", "features": ["avx2", "avx512f"]}),
        ("options", {"dtype": "bf16"}),
        ("versions", {"ferrumc": "0.1.0", "tvm": "0.28.0"}),
    ]:
        assert cache_key(**{**base, field: value}) != key, field


def test_file_hashes_are_remembered_by_size_and_mtime(tmp_path, monkeypatch):
    from ferrumc.codegen import cache

    monkeypatch.setenv("FERRUMC_CACHE_DIR", str(tmp_path / "cache"))
    model = tmp_path / "m.gguf"
    model.write_bytes(b"weights")
    calls = []
    real = cache.sha256_of
    monkeypatch.setattr(cache, "sha256_of", lambda p: calls.append(p) or real(p))
    first = cache.model_identity(model)
    assert cache.model_identity(model) == first and len(calls) == 1  # the fast path
    model.write_bytes(b"other weights")  # new size and mtime: hashed again
    assert cache.model_identity(model) != first and len(calls) == 2


def test_a_damaged_cache_entry_is_rebuilt(llama_bundle, tiny_checkpoint, tmp_path, monkeypatch):
    from ferrumc.codegen import cache
    from ferrumc.codegen import compile as compile_module
    from ferrumc.runtime.loader import open_model

    ref = str(tiny_checkpoint("llama"))
    monkeypatch.setenv("FERRUMC_CACHE_DIR", str(tmp_path / "cache"))
    rebuilt = []

    def copy_instead(ref, out, **kwargs):  # a compile stand-in: the session's good bundle
        rebuilt.append(out)
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(llama_bundle, out)

    monkeypatch.setattr(compile_module, "compile_model", copy_instead)
    entry = cache.cached_bundle(ref, progress=False)
    (entry / "model.so").unlink()
    assert open_model(ref, progress=False).path == entry
    assert rebuilt == [entry, entry]


# --- the command line ----------------------------------------------------------------------------


def test_cli_verify(bundle):
    result = CliRunner().invoke(main, ["verify", str(bundle)])
    assert result.exit_code == 0 and result.output.startswith("OK "), result.output
    (bundle / "tokenizer.json").write_text("{}")
    result = CliRunner().invoke(main, ["verify", str(bundle)])
    assert result.exit_code == 1
    assert result.output.startswith("error: ") and "tokenizer sha256 mismatch" in result.output


def test_cli_compile_without_output_prints_the_cache_entry(llama_bundle, tiny_checkpoint):
    result = CliRunner().invoke(main, ["compile", str(tiny_checkpoint("llama"))])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [str(llama_bundle)]  # cached: nothing compiled


def test_cli_compile_unknown_target(tiny_checkpoint):
    result = CliRunner().invoke(main, ["compile", str(tiny_checkpoint("llama")), "-t", "tpu"])
    assert result.exit_code == 1
    assert "error: unknown target 'tpu'; valid: llvm, cuda, metal" in result.output
    from ferrumc.codegen.targets import get_target

    with pytest.raises(CodegenError):
        get_target("tpu")


@pytest.mark.slow
def test_cli_compile_to_a_directory(tiny_checkpoint, tmp_path):
    out = tmp_path / "qwen3.ferrum"
    result = CliRunner().invoke(
        main, ["compile", str(tiny_checkpoint("qwen3")), "-o", str(out), "--dtype", "f16"]
    )
    assert result.exit_code == 0, result.output
    assert str(out) in result.output.splitlines()  # stdout; the timings went to stderr
    assert verify_bundle(out).options == {"dtype": "f16"}
