"""A `tokenizers.Tokenizer` with the model's BOS and EOS facts: what the engine and the chat encode with.

Who adds BOS: both frontends record it in TokenizerInfo.add_bos_token (a Hugging Face
tokenizer_config's add_bos_token or its post-processor; a GGUF's add_bos_token, llama.cpp's
default for SentencePiece). `encode` therefore never runs the post-processor (which could
also append EOS) and prepends BOS itself when asked, once: text that starts with the BOS
token (a rendered chat template often does) does not get a second one.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer

from ..errors import CheckpointError
from ..frontend.model import TokenizerInfo


class Tokenizer:
    """Encode and decode text for one model."""

    def __init__(self, info: TokenizerInfo) -> None:
        self.info = info
        # The `tokenizers` object itself, for code that wants it (chat_template.ChatEncoder).
        try:
            self.hf = HFTokenizer.from_str(info.tokenizer_json)
        except Exception as e:  # tokenizers raises a bare Exception on malformed JSON
            raise CheckpointError(f"the model's tokenizer JSON does not load ({e})") from None
        self.bos_token_id = info.bos_token_id
        self.eos_token_ids: tuple[int, ...] = tuple(info.eos_token_ids)

    @classmethod
    def from_file(cls, path: Path, **facts: object) -> Tokenizer:
        """A tokenizer.json file alone (tests, tools); TokenizerInfo fields may be given as facts."""
        return cls(TokenizerInfo(tokenizer_json=Path(path).read_text(encoding="utf-8"), **facts))  # type: ignore[arg-type]

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, *, add_bos: bool | None = None) -> list[int]:
        """Token ids of text; BOS prepended per add_bos (default: the model's add_bos_token)."""
        ids = self.hf.encode(text, add_special_tokens=False).ids
        add_bos = self.info.add_bos_token if add_bos is None else add_bos
        bos = self.bos_token_id
        if add_bos and bos is not None and (not ids or ids[0] != bos):
            ids = [bos, *ids]
        return ids

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self.hf.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self.hf.id_to_token(token_id)
