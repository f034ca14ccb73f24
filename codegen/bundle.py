"""The bundle format: a directory with a versioned, self-hashed manifest, a library and weight shards.

    model.ferrum/
      manifest.json      format version, versions, target, model config, entry points, params, hashes
      model.so           the compiled library
      params-00000.bin   weights in the library's order, each 64-byte aligned, memory-mapped at load
      tokenizer.json     the tokenizer (chat template and special tokens live in the manifest)

A bundle is written into a temporary sibling directory and renamed into place, so a crash
never leaves a half-written bundle under the requested name. Nothing here imports TVM:
`ferrumc verify` and the loader's checks run before any library is opened.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from ..errors import BundleError
from ..frontend.pull import sha256_of
from ..ir.types import DType, storage_shape

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
TOKENIZER = "tokenizer.json"
SHARD_BYTES = 1 << 30
# TVM's kernels assume 64-byte aligned buffers; the mmap base is page-aligned.
ALIGN = 64


@dataclass(frozen=True)
class ParamEntry:
    """Where one weight lives: shard file, byte offset and size, and its sha256."""

    name: str
    dtype: str
    shape: tuple[int, ...]  # the logical shape (u4: packed two per byte along the last axis)
    shard: str
    offset: int
    nbytes: int
    sha256: str


@dataclass
class Manifest:
    """Everything needed to decide whether a bundle loads here, and how to run it."""

    name: str
    ferrumc_version: str
    tvm_version: str
    tvm_ffi_version: str
    target: dict[str, Any]  # name, tvm target, host, device, machine, required CPU/GPU features
    model: dict[str, Any]  # source (as given), path, format, identity, config (DecoderConfig)
    options: dict[str, Any]  # compile options
    entry_points: dict[str, dict[str, list[str]]]  # name -> inputs (before params), outputs
    kv_cache: dict[str, Any] | None  # the cache layout create_kv_cache was specialized on
    library: dict[str, str] = field(default_factory=dict)  # file, sha256 (set by the writer)
    params: list[ParamEntry] = field(default_factory=list)  # the library's weight order
    tokenizer: dict[str, Any] | None = None  # file, sha256 and the TokenizerInfo fields
    timings: dict[str, float] = field(default_factory=dict)  # seconds per compile phase
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        body = asdict(self)
        body["params"] = [asdict(p) for p in self.params]
        return body

    @staticmethod
    def from_dict(body: dict[str, Any], where: Path) -> Manifest:
        try:
            params = [ParamEntry(**{**p, "shape": tuple(p["shape"])}) for p in body.pop("params")]
            return Manifest(params=params, **body)
        except (TypeError, KeyError) as e:
            raise BundleError(
                f"{where}: manifest is malformed ({e}); {recompile_hint(where)}"
            ) from None

    def library_metadata(self) -> dict[str, Any]:
        """What runtime/library.Library reads: weight order and types, entry signatures, cache."""
        return {
            "weights": [
                {"name": p.name, "dtype": p.dtype, "shape": list(p.shape)} for p in self.params
            ],
            "functions": self.entry_points,
            "kv_cache": self.kv_cache,
            "vocab_size": self.model["config"]["vocab_size"],
        }

    def summary(self) -> str:
        total = sum(p.nbytes for p in self.params)
        return (
            f"{self.name}: {self.model['config']['model_type']} for {self.target['name']} "
            f"({self.options.get('dtype', '?')}), {len(self.params)} weights, "
            f"{total / 2**20:.1f} MiB, ferrumc {self.ferrumc_version}, TVM {self.tvm_version}"
        )


def recompile_hint(bundle: Path, manifest: Manifest | None = None) -> str:
    """The command that rebuilds `bundle`, as precise as the manifest allows."""
    if manifest is None:
        return f"recompile it: `ferrumc compile MODEL -o {bundle}`"
    source = manifest.model.get("source", "MODEL")
    dtype = manifest.options.get("dtype", "f32")
    target = manifest.target.get("name", "llvm")
    flags = option_flags(manifest.options)
    return (
        f"recompile it: `ferrumc compile {source} -t {target} --dtype {dtype}{flags} -o {bundle}`"
    )


def option_flags(options: dict[str, Any]) -> str:
    """The `ferrumc compile` flags, besides --dtype, that reproduce a manifest's options."""
    flags = quantize_flags(options.get("quantize"))
    if options.get("int4_activations", "int8") != "int8":
        flags += f" --int4-activations {options['int4_activations']}"
    if options.get("kv_dtype"):
        flags += f" --kv-dtype {options['kv_dtype']}"
    return flags


def quantize_flags(record: dict[str, Any] | None) -> str:
    """The `ferrumc compile` flags that reproduce a manifest's quantization record."""
    if not record:
        return ""
    flags = (
        f" -q {record['method']} --group-size {record['group_size']} --scheme {record['scheme']}"
    )
    if record["quantizer"] == "gptq":
        flags += " --quantizer gptq" + (" --act-order" if record.get("act_order") else "")
        if record.get("calibration", "shipped") != "shipped":
            flags += f" --calibration {record['calibration']}"
    return flags


def digest(body: dict[str, Any]) -> str:
    """The manifest's self-hash: sha256 of its canonical JSON without the "sha256" key."""
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


class BundleWriter:
    """Builds a bundle in a hidden temporary sibling of `out`; `commit` renames it into place.

    Used as a context manager, an exception before `commit` removes the temporary directory.
    """

    def __init__(self, out: Path) -> None:
        self.out = Path(out)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.dir = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.", dir=self.out.parent))

    def __enter__(self) -> BundleWriter:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if kind is not None:
            self.abort()

    def write_params(self, params: Iterable[tuple[str, DType, np.ndarray]]) -> list[ParamEntry]:
        """Append each (name, dtype, storage array) to the shards as it arrives (one at a time)."""
        return _write_shards(self.dir, params)

    def add_library(self, library: Path) -> dict[str, str]:
        """Take the compiled library (copied unless it was exported into this directory)."""
        library = Path(library)
        name = "model" + "".join(library.suffixes[-1:])
        if library.resolve() != (self.dir / name).resolve():
            shutil.copyfile(library, self.dir / name)
        return {"file": name, "sha256": sha256_of(self.dir / name)}

    def write_tokenizer(self, tokenizer_json: str) -> dict[str, str]:
        path = self.dir / TOKENIZER
        path.write_text(tokenizer_json, encoding="utf-8")
        return {"file": TOKENIZER, "sha256": sha256_of(path)}

    def commit(self, manifest: Manifest) -> Path:
        """Write the self-hashed manifest and move the bundle to `out` (replacing one there)."""
        body = manifest.to_dict()
        body["sha256"] = digest(body)
        (self.dir / MANIFEST).write_text(json.dumps(body, indent=1) + "\n", encoding="utf-8")
        self.dir.chmod(0o755)  # mkdtemp made it private; a bundle is shared like any file
        if self.out.exists():
            shutil.rmtree(self.out)  # processes that mapped its files keep them until they exit
        os.replace(self.dir, self.out)
        return self.out

    def abort(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def write_bundle(
    out: Path,
    manifest: Manifest,
    library: Path,
    params: Iterable[tuple[str, DType, np.ndarray]],
    tokenizer_json: str | None = None,
) -> Manifest:
    """Write a complete bundle at `out` in one call; returns the final manifest."""
    with BundleWriter(out) as writer:
        manifest.params = writer.write_params(params)
        manifest.library = writer.add_library(library)
        if tokenizer_json is not None:
            manifest.tokenizer = {
                **(manifest.tokenizer or {}),
                **writer.write_tokenizer(tokenizer_json),
            }
        writer.commit(manifest)
    return manifest


def _write_shards(
    folder: Path, params: Iterable[tuple[str, DType, np.ndarray]]
) -> list[ParamEntry]:
    entries: list[ParamEntry] = []
    shard_index, offset, f = 0, 0, None
    try:
        for name, dtype, array in params:
            data = np.ascontiguousarray(array)
            if data.dtype != dtype.numpy:
                raise BundleError(
                    f"weight {name!r}: numpy {data.dtype} does not hold {dtype.value}"
                )
            if f is None or (offset and offset + data.nbytes > SHARD_BYTES):
                if f is not None:
                    f.close()
                    shard_index += 1
                f, offset = (folder / f"params-{shard_index:05d}.bin").open("wb"), 0
            pad = -offset % ALIGN
            f.write(b"\0" * pad)
            offset += pad
            raw = data.reshape(-1).view(np.uint8)  # bf16 has no buffer format of its own
            f.write(raw)
            shape = _logical_shape(dtype, data.shape)
            shard = Path(f.name).name
            sha = hashlib.sha256(raw).hexdigest()
            entries.append(ParamEntry(name, dtype.value, shape, shard, offset, raw.nbytes, sha))
            offset += raw.nbytes
    finally:
        if f is not None:
            f.close()
    return entries


def _logical_shape(dtype: DType, stored: tuple[int, ...]) -> tuple[int, ...]:
    if dtype is DType.u4:
        return (*stored[:-1], stored[-1] * 2)
    return tuple(stored)


def read_manifest(bundle: Path) -> Manifest:
    """Read and check a bundle's manifest: present, parseable, of a known format, unedited."""
    bundle = Path(bundle)
    path = bundle / MANIFEST
    if not bundle.is_dir():
        raise BundleError(f"{bundle}: not a bundle directory; {recompile_hint(bundle)}")
    if not path.is_file():
        raise BundleError(
            f"{bundle}: no {MANIFEST}, the bundle is incomplete; {recompile_hint(bundle)}"
        )
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{path}: not valid JSON ({e}); {recompile_hint(bundle)}") from None
    if not isinstance(body, dict):
        raise BundleError(f"{path}: not a manifest object; {recompile_hint(bundle)}")
    # The format first: another format may hash its manifest differently.
    version = body.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleError(
            f"{bundle}: bundle format {version}, this ferrumc reads format {FORMAT_VERSION}; "
            f"{recompile_hint(bundle)} with this ferrumc"
        )
    stored = body.pop("sha256", None)
    if stored != digest(body):
        raise BundleError(
            f"{path}: manifest was edited or corrupted (its sha256 does not match its contents); "
            f"{recompile_hint(bundle)}"
        )
    return Manifest.from_dict(body, bundle)


def check_files(bundle: Path, manifest: Manifest) -> None:
    """The cheap checks made at every load: library present and unchanged, every shard long
    enough for its weights, tokenizer present and unchanged. Weight hashes are `verify_bundle`'s."""
    bundle = Path(bundle)
    hint = recompile_hint(bundle, manifest)
    lib = bundle / manifest.library["file"]
    if not lib.is_file():
        raise BundleError(f"{lib}: compiled library is missing; {hint}")
    if sha256_of(lib) != manifest.library["sha256"]:
        raise BundleError(f"{lib}: library sha256 mismatch (corrupted or replaced); {hint}")
    needed: dict[str, int] = {}
    for p in manifest.params:
        needed[p.shard] = max(needed.get(p.shard, 0), p.offset + p.nbytes)
    for shard, size in needed.items():
        path = bundle / shard
        if not path.is_file():
            raise BundleError(f"{path}: weight shard is missing; {hint}")
        if (actual := path.stat().st_size) < size:
            raise BundleError(
                f"{path}: weight shard truncated ({actual} bytes, the manifest needs {size}); "
                f"copy the bundle again or {hint}"
            )
    tok = manifest.tokenizer
    if tok is not None:
        path = bundle / tok["file"]
        if not path.is_file():
            raise BundleError(f"{path}: tokenizer is missing; {hint}")
        if sha256_of(path) != tok["sha256"]:
            raise BundleError(f"{path}: tokenizer sha256 mismatch (edited or corrupted); {hint}")


def verify_bundle(bundle: Path) -> Manifest:
    """Check every hash in the bundle (manifest, library, tokenizer, each weight); raises
    BundleError on the first bad one."""
    manifest = read_manifest(bundle)
    check_files(bundle, manifest)
    raw = _raw_params(bundle, manifest)
    for p in manifest.params:
        if hashlib.sha256(raw[p.name]).hexdigest() != p.sha256:
            raise BundleError(
                f"{bundle / p.shard}: weight {p.name!r} sha256 mismatch; "
                f"{recompile_hint(Path(bundle), manifest)}"
            )
    return manifest


def _raw_params(bundle: Path, manifest: Manifest) -> dict[str, np.ndarray]:
    """Each weight's bytes, memory-mapped copy-on-write (shared with the page cache until written)."""
    out: dict[str, np.ndarray] = {}
    maps: dict[str, np.memmap] = {}
    for p in manifest.params:
        if p.shard not in maps:
            maps[p.shard] = np.memmap(Path(bundle) / p.shard, dtype=np.uint8, mode="c")
        out[p.name] = maps[p.shard][p.offset : p.offset + p.nbytes]
    return out


def load_params(bundle: Path, manifest: Manifest) -> dict[str, np.ndarray]:
    """Every weight as a typed, memory-mapped array in the library's order (no copy); call
    `check_files` first so a truncated shard is named rather than failing here."""
    raw = _raw_params(bundle, manifest)
    out = {}
    for p in manifest.params:
        dtype = DType(p.dtype)
        out[p.name] = raw[p.name].view(dtype.numpy).reshape(storage_shape(dtype, p.shape))
    return out
