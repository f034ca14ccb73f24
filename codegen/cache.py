"""The compile cache: bundles under ~/.cache/ferrumc/bundles/<key>, keyed by everything that decides their bytes.

key = sha256 of (bundle format, ferrumc / TVM / tvm-ffi versions and the compiler's source digest,
model identity, target with the detected CPU features, compile options). The model identity is content, not a path: a file's
sha256, or for a Hugging Face folder the sha256 of its config, tokenizer and weight files.
Hashing a multi-gigabyte checkpoint on every `ferrumc run` would be slow, so each file's hash is
remembered with its (path, size, mtime) and reused while those stay the same.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..frontend.pull import sha256_of
from .bundle import FORMAT_VERSION

if TYPE_CHECKING:
    from ..passes.quantization import Int4Quantization

CACHE_ENV = "FERRUMC_CACHE_DIR"
# Files of a checkpoint folder that decide the compiled bundle (weights, config, tokenizer).
HF_SUFFIXES = (".json", ".safetensors", ".jinja", ".gguf", ".model", ".txt")


def cache_root() -> Path:
    """ferrumc's cache folder: $FERRUMC_CACHE_DIR, else ~/.cache/ferrumc (read now, not at import)."""
    if root := os.environ.get(CACHE_ENV):
        return Path(root).expanduser()
    return Path.home() / ".cache" / "ferrumc"


def bundles_dir() -> Path:
    return cache_root() / "bundles"


def file_sha256(path: Path) -> str:
    """sha256 of a file, reusing the hash recorded for the same (path, size, mtime)."""
    path = Path(path).resolve()
    stat = path.stat()
    stamp = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    index_path = cache_root() / "file-hashes.json"
    index = _read_index(index_path)
    known = index.get(str(path))
    if known is not None and {k: known.get(k) for k in stamp} == stamp:
        return str(known["sha256"])
    digest = sha256_of(path)
    index[str(path)] = {**stamp, "sha256": digest}
    _write_index(index_path, index)
    return digest


def _read_index(path: Path) -> dict[str, dict[str, Any]]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}  # no index yet, or a broken one: hashes are recomputed and it is rewritten
    return data if isinstance(data, dict) else {}


def _write_index(path: Path, index: dict[str, dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(index, indent=0, sort_keys=True))
    os.replace(tmp, path)  # atomic: concurrent writers lose an entry at worst, never the file


def model_identity(checkpoint: Path) -> dict[str, Any]:
    """What the checkpoint is, by content: its file's hash, or its folder's relevant files' hashes."""
    checkpoint = Path(checkpoint)
    if checkpoint.is_file():
        return {"file": checkpoint.name, "sha256": file_sha256(checkpoint)}
    files = sorted(
        p
        for p in checkpoint.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.name.endswith(HF_SUFFIXES)
    )
    return {"folder": {p.name: file_sha256(p) for p in files}}


# The packages whose code decides a bundle's bytes (the runtime's does not).
COMPILER_PACKAGES = ("frontend", "ir", "passes", "codegen")


def source_digest() -> str:
    """sha256 of the compiler's own source: in a development checkout the version number stays
    while the code changes, and a bundle from older code must not be served from the cache."""
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for package in COMPILER_PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def cache_key(
    identity: dict[str, Any],
    target: dict[str, Any],
    options: dict[str, Any],
    versions: dict[str, str],
) -> str:
    """The bundle's cache key; `target` is Target.describe() (TVM target and CPU features)."""
    body = {
        "format_version": FORMAT_VERSION,
        "versions": versions,
        "model": identity,
        "target": target,
        "options": options,
    }
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


@contextlib.contextmanager
def locked(bundle: Path) -> Iterator[None]:
    """Hold an exclusive lock on `bundle` (a sibling .lock file), so that `ferrumc run` and
    `ferrumc serve` started together compile a model once, the second waiting for the first."""
    bundle.parent.mkdir(parents=True, exist_ok=True)
    with open(bundle.with_name(bundle.name + ".lock"), "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def cached_bundle(
    ref: str,
    *,
    target: str = "llvm",
    dtype: str = "f32",
    quantize: Int4Quantization | None = None,
    int4_activations: str = "int8",
    kv_dtype: str | None = None,
    progress: bool = True,
    rebuild: bool = False,
    dump_ir: Path | None = None,
) -> Path:
    """The cache's bundle for `ref` on `target` in `dtype` (int4 with `quantize`; int4 decode
    with `int4_activations`; the KV cache in `kv_dtype`, see CompileOptions), compiled first if
    it is not there."""
    import tvm
    import tvm_ffi

    from .. import __version__
    from ..frontend.resolve import resolve_model
    from ..passes.pipeline import CompileOptions
    from .compile import compile_model, options_record
    from .targets import get_target

    options = CompileOptions.from_flags(dtype, quantize, int4_activations, kv_dtype)
    chosen = get_target(target)
    identity = model_identity(resolve_model(ref))
    versions = {
        "ferrumc": __version__,
        "ferrumc_source": source_digest(),
        "tvm": tvm.__version__,
        "tvm_ffi": tvm_ffi.__version__,
    }
    key = cache_key(identity, chosen.describe(), options_record(options), versions)
    out = bundles_dir() / key
    with locked(out):
        # Bundles appear by rename, complete: a manifest means a finished compile.
        if rebuild or not (out / "manifest.json").is_file():
            # Under the lock, a temporary sibling is a killed compile's leftover.
            for stale in out.parent.glob(f".{key}.*"):
                shutil.rmtree(stale, ignore_errors=True)
            compile_model(
                ref,
                out,
                target=chosen,
                options=options,
                progress=progress,
                dump_ir=dump_ir,
                identity=identity,
            )
    return out
