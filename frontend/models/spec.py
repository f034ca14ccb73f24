"""What an architecture module declares: its config fields, its weight-name table and its sparse MLP."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...errors import CheckpointError
from ...ir.graph import Value

if TYPE_CHECKING:
    from .decoder import Layers


@dataclass(frozen=True)
class ConfigFields:
    """A parsed config.json; getters check types and name the file and field when one is wrong."""

    raw: Mapping[str, Any]
    source: Path

    def require(self, key: str, kind: type = int) -> Any:
        value = self.raw.get(key)
        if value is None:
            raise CheckpointError(f"{self.source}: required field {key!r} is missing")
        return self._check(key, value, kind)

    def get(self, key: str, kind: type, default: Any = None) -> Any:
        """The field's value; `default` when absent or null."""
        value = self.raw.get(key)
        return default if value is None else self._check(key, value, kind)

    def _check(self, key: str, value: Any, kind: type) -> Any:
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise CheckpointError(
                f"{self.source}: field {key!r} must be {kind.__name__}, got {value!r}"
            )
        return value


# An architecture's sparse MLP: (layers, layer index, normed x[T, C]) -> [T, C].
SparseMLP = Callable[["Layers", int, Value], Value]


def _no_fields(fields: ConfigFields) -> dict[str, Any]:
    return {}


@dataclass(frozen=True)
class Architecture:
    """One Hugging Face `model_type`: how it differs from the shared decoder.

    `weight_names` maps HF tensor names to ferrumc names; `{i}` is the layer. An HF name with
    `{e}` is one expert's slice, stacked on axis 0 into the ferrumc tensor; a tuple of ferrumc
    names means the HF tensor is split evenly along axis 1 into them (fused gate_up experts).
    """

    model_type: str
    weight_names: Mapping[str, str | tuple[str, ...]]
    # DecoderConfig fields particular to the architecture, read from config.json.
    config_fields: Callable[[ConfigFields], dict[str, Any]] = _no_fields
    # HF tensors present in some checkpoints that the model deliberately does not use.
    unused: tuple[str, ...] = ("model.layers.{i}.self_attn.rotary_emb.inv_freq",)
    sparse_mlp: SparseMLP | None = None
    # Transformers' defaults for fields a config.json may omit.
    defaults: Mapping[str, Any] = field(default_factory=dict)
