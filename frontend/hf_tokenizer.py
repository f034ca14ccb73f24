"""Read a Hugging Face checkpoint's tokenizer files and generation_config.json into TokenizerInfo."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from ..errors import CheckpointError
from .model import TokenizerInfo

SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "pad_token")


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from `path`, or {} when the file does not exist."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object")
    return data


def token_ids(value: object) -> list[int]:
    """An `eos_token_id`-style field (int, list of ints or null) as a list."""
    if value is None:
        return []
    return [value] if isinstance(value, int) else [int(v) for v in value]  # type: ignore[union-attr]


def _token_text(value: object) -> str | None:
    """A special token as tokenizer_config writes it: a string or an AddedToken dict."""
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def _chat_template(directory: Path, tokenizer_config: Mapping[str, Any]) -> str | None:
    # Newer checkpoints keep the template in its own file, which takes precedence.
    jinja = directory / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text()
    template = read_json(directory / "chat_template.json").get("chat_template")
    template = template or tokenizer_config.get("chat_template")
    if isinstance(template, list):  # named templates: [{"name": "default", "template": ...}]
        named = {t.get("name"): t.get("template") for t in template}
        template = named.get("default")
    return template if isinstance(template, str) else None


def _adds_bos(tokenizer_json: Mapping[str, Any], bos: str | None) -> bool:
    """Whether tokenizer.json's post-processor prepends `bos` to a single sequence."""
    post = tokenizer_json.get("post_processor") or {}
    processors = post.get("processors", [post])
    for proc in processors:
        for piece in (proc or {}).get("single", []):
            if piece.get("SpecialToken", {}).get("id") == bos:
                return True
    return False


def load_tokenizer(
    directory: Path, generation: Mapping[str, Any], model_config: Mapping[str, Any]
) -> TokenizerInfo | None:
    """TokenizerInfo from tokenizer.json and friends; None when the checkpoint has no tokenizer.json."""
    path = directory / "tokenizer.json"
    if not path.is_file():
        return None
    text = path.read_text()
    try:
        tokenizer = Tokenizer.from_str(text)
    except Exception as e:  # tokenizers raises a bare Exception on malformed files
        raise CheckpointError(
            f"{path} is not a valid tokenizers file ({e}); re-download it"
        ) from None
    config = read_json(directory / "tokenizer_config.json")
    specials = {k: t for k in SPECIAL_TOKENS if (t := _token_text(config.get(k))) is not None}
    bos, eos = specials.get("bos_token"), specials.get("eos_token")

    def id_of(token: str | None) -> int | None:
        return None if token is None else tokenizer.token_to_id(token)

    # generation_config.json is what transformers' generate() obeys; config.json is the fallback.
    facts = {**model_config, **generation} if generation else dict(model_config)
    bos_id = id_of(bos)
    if bos_id is None:
        bos_id = (token_ids(facts.get("bos_token_id")) or [None])[0]
    eos_ids = [i for i in [id_of(eos), *token_ids(facts.get("eos_token_id"))] if i is not None]
    pad_id = id_of(specials.get("pad_token"))
    if pad_id is None:
        pad_id = (token_ids(facts.get("pad_token_id")) or [None])[0]
    add_bos = config.get("add_bos_token")
    if not isinstance(add_bos, bool):
        add_bos = _adds_bos(json.loads(text), bos)
    return TokenizerInfo(
        tokenizer_json=text,
        chat_template=_chat_template(directory, config),
        bos_token=bos,
        eos_token=eos,
        bos_token_id=bos_id,
        eos_token_ids=tuple(dict.fromkeys(eos_ids)),
        pad_token_id=pad_id,
        add_bos_token=add_bos,
        template_vars=specials,
    )
