"""Open a compiled bundle ready to generate: check it fits this machine, map its weights, start the VM.

    open_bundle("smollm2.ferrum")       a bundle directory
    open_model("smollm2")               any model reference: compiled once into the cache, then opened

Every check that can fail names the difference and the command that fixes it, and all of them
run before the library is loaded, so an incompatible bundle is refused rather than crashing
(code for missing CPU features dies with SIGILL at the first kernel).
"""

from __future__ import annotations

import platform
import sys
from dataclasses import dataclass
from pathlib import Path

from .. import __version__
from ..codegen.bundle import (
    MANIFEST,
    Manifest,
    check_files,
    load_params,
    read_manifest,
    recompile_hint,
)
from ..codegen.records import config_from_record, tokenizer_from_record
from ..codegen.targets import cpu_flags
from ..codegen.tvm_import import tvm
from ..errors import BundleError
from ..frontend.config import DecoderConfig
from ..frontend.model import TokenizerInfo
from .vm import CacheConfig, VMExecutor


@dataclass
class LoadedBundle:
    """A bundle opened on this machine: its manifest, a ready executor, tokenizer and config."""

    path: Path
    manifest: Manifest
    executor: VMExecutor
    tokenizer_info: TokenizerInfo | None
    config: DecoderConfig

    @property
    def name(self) -> str:
        return self.manifest.name


def is_bundle(ref: str | Path) -> bool:
    return (Path(ref).expanduser() / MANIFEST).is_file()


def open_bundle(path: str | Path, *, cache: CacheConfig | None = None) -> LoadedBundle:
    """Check the bundle at `path` against this machine and load it (weights memory-mapped)."""
    path = Path(path).expanduser()
    manifest = read_manifest(path)  # format version, then the manifest's own hash
    check_compatible(path, manifest)  # versions, target, CPU features
    check_files(path, manifest)  # library, shards, tokenizer
    tokenizer = None
    if manifest.tokenizer is not None:
        text = (path / manifest.tokenizer["file"]).read_text(encoding="utf-8")
        tokenizer = tokenizer_from_record(manifest.tokenizer, text)
    config = config_from_record(manifest.model["config"])
    executor = VMExecutor(
        path / manifest.library["file"],
        load_params(path, manifest),
        cache,
        device=manifest.target["device"],
        max_context=config.max_position_embeddings,
        metadata=manifest.library_metadata(),
    )
    return LoadedBundle(path, manifest, executor, tokenizer, config)


def check_compatible(path: Path, manifest: Manifest) -> None:
    """Refuse a bundle this ferrumc, this TVM or this machine cannot run."""
    hint = recompile_hint(path, manifest)
    if _major_minor(manifest.ferrumc_version) != _major_minor(__version__):
        raise BundleError(
            f"{path}: compiled by ferrumc {manifest.ferrumc_version}, this is ferrumc "
            f"{__version__} (major.minor must match); {hint}"
        )
    if manifest.tvm_version != tvm.__version__:
        raise BundleError(
            f"{path}: compiled with TVM {manifest.tvm_version}, this ferrumc runs TVM "
            f"{tvm.__version__}; {hint}, or install apache-tvm=={manifest.tvm_version}"
        )
    target = manifest.target
    device = target["device"]
    source = manifest.model.get("source", "MODEL")
    local = path.with_name(f"{path.stem}-llvm{path.suffix}")
    here_hint = f"compile for this machine instead: `ferrumc compile {source} -t llvm -o {local}`"
    if device != "cpu" and not tvm.device(device).exist:
        raise BundleError(
            f"{path}: compiled for {target['name']} (device {device}), but this machine has no "
            f"{device} device; {here_hint}"
        )
    if device == "cpu":
        machine = target.get("machine")
        if machine and machine != platform.machine():
            raise BundleError(
                f"{path}: compiled for {machine} CPUs, this machine is {platform.machine()}; "
                f"{here_hint}"
            )
        missing = [f for f in target.get("features", []) if f not in cpu_flags()]
        if missing:
            raise BundleError(
                f"{path}: compiled for a CPU with {', '.join(missing)}, which this CPU lacks "
                f"(mcpu {target['target'].get('mcpu')}); {here_hint}"
            )


def _major_minor(version: str) -> tuple[str, ...]:
    return tuple(version.split(".")[:2])


def open_model(
    ref: str,
    *,
    target: str = "llvm",
    dtype: str = "f32",
    progress: bool = True,
    cache: CacheConfig | None = None,
) -> LoadedBundle:
    """Open `ref`: a bundle directory as it is, anything else (checkpoint folder, .gguf file,
    alias, Hugging Face id) compiled into the compile cache on first use, then opened."""
    if is_bundle(ref):
        return open_bundle(ref, cache=cache)
    from ..codegen.cache import cached_bundle

    path = cached_bundle(ref, target=target, dtype=dtype, progress=progress)
    try:
        return open_bundle(path, cache=cache)
    except BundleError as e:
        # A cache entry damaged since it was written: rebuild it once rather than fail forever.
        print(f"ferrumc: cached bundle unusable ({e}); recompiling", file=sys.stderr)
        path = cached_bundle(ref, target=target, dtype=dtype, progress=progress, rebuild=True)
        return open_bundle(path, cache=cache)
