"""Rebuild a Hugging Face `tokenizers` tokenizer and its chat facts from a GGUF file's metadata."""

from __future__ import annotations

from collections.abc import Callable

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

from ..errors import UnsupportedModel
from .gguf_reader import GGUFFile
from .model import TokenizerInfo

UNKNOWN, CONTROL, USER_DEFINED = 2, 3, 4  # llama.cpp's token types

# Split patterns of llama.cpp's pre-tokenizer types, as the models' own tokenizer.json spell them.
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _gpt2() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)


def _digits_then_gpt2() -> pre_tokenizers.PreTokenizer:
    # llama.cpp's starcoder family (smollm, refact, ...): every digit alone, then GPT-2's split.
    return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), _gpt2()])


def _split(pattern: str) -> Callable[[], pre_tokenizers.PreTokenizer]:
    def build() -> pre_tokenizers.PreTokenizer:
        return pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )

    return build


# `tokenizer.ggml.pre` -> the pre-tokenizer of a byte-level BPE vocabulary.
BYTE_LEVEL_PRE_TOKENIZERS: dict[str, Callable[[], pre_tokenizers.PreTokenizer]] = {
    "default": _gpt2,
    "gpt-2": _gpt2,
    "smollm": _digits_then_gpt2,
    "starcoder": _digits_then_gpt2,
    "refact": _digits_then_gpt2,
    "llama-bpe": _split(LLAMA3_SPLIT),
    "llama3": _split(LLAMA3_SPLIT),
    "llama-v3": _split(LLAMA3_SPLIT),
    "smaug-bpe": _split(LLAMA3_SPLIT),
    "falcon3": _split(LLAMA3_SPLIT),
    "qwen2": _split(QWEN2_SPLIT),
    "deepseek-r1-qwen": _split(QWEN2_SPLIT),
}


def byte_alphabet() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = list(printable), 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, chars, strict=True)}


def _merges(f: GGUFFile) -> list[tuple[str, str]]:
    return [tuple(m.split(" ", 1)) for m in f.string_array("tokenizer.ggml.merges")]  # type: ignore[misc]


def _byte_level_bpe(f: GGUFFile, tokens: list[str]) -> Tokenizer:
    pre = str(f.get("tokenizer.ggml.pre", "default"))
    if pre not in BYTE_LEVEL_PRE_TOKENIZERS:
        valid = ", ".join(sorted(BYTE_LEVEL_PRE_TOKENIZERS))
        raise UnsupportedModel(
            f"{f.path}: tokenizer.ggml.pre is {pre!r}, a pre-tokenizer ferrumc does not know; "
            f"supported: {valid}"
        )
    alphabet = byte_alphabet()
    spelled = set(alphabet.values())
    # Tokens outside the byte alphabet (a few converters store raw text) are re-spelled as bytes.
    vocab = {
        t if set(t) <= spelled else "".join(alphabet[b] for b in t.encode("utf-8")): i
        for i, t in enumerate(tokens)
    }
    tok = Tokenizer(models.BPE(vocab=vocab, merges=_merges(f), fuse_unk=False))
    tok.pre_tokenizer = BYTE_LEVEL_PRE_TOKENIZERS[pre]()
    tok.decoder = decoders.ByteLevel()
    return tok


def _sentencepiece_merges(tokens: list[str], scores: list[float]) -> list[tuple[str, str]]:
    """Merges a SentencePiece vocabulary implies: every split of a token into two tokens, best score first."""
    ids = {t: i for i, t in enumerate(tokens)}
    merges = []
    for token, score in zip(tokens, scores, strict=True):
        pairs = [(token[:k], token[k:]) for k in range(1, len(token))]
        pairs = [p for p in pairs if p[0] in ids and p[1] in ids]
        pairs.sort(key=lambda p: (ids[p[0]], ids[p[1]]))
        merges.extend((left, right, score) for left, right in pairs)
    merges.sort(key=lambda m: (m[2], len(m[0]), len(m[1])), reverse=True)
    return [(left, right) for left, right, _ in merges]


def _sentencepiece_bpe(f: GGUFFile, tokens: list[str]) -> Tokenizer:
    scores = [float(s) for s in f.get("tokenizer.ggml.scores", [0.0] * len(tokens))]  # type: ignore[union-attr]
    merges = _merges(f) or _sentencepiece_merges(tokens, scores)
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=True, byte_fallback=True))
    add_prefix = bool(f.get("tokenizer.ggml.add_space_prefix", True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(
        replacement="▁", prepend_scheme="first" if add_prefix else "never", split=False
    )
    steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if add_prefix:
        steps.append(decoders.Strip(content=" ", left=1))
    tok.decoder = decoders.Sequence(steps)
    return tok


# `tokenizer.ggml.model` -> builder of the tokenization model.
TOKENIZER_MODELS: dict[str, Callable[[GGUFFile, list[str]], Tokenizer]] = {
    "gpt2": _byte_level_bpe,
    "llama": _sentencepiece_bpe,
}


def _add_special_tokens(
    tok: Tokenizer, tokens: list[str], types: list[int], named: set[int]
) -> None:
    # Control and unknown tokens (and the named bos/eos/...) are matched whole in text and are
    # special, as llama.cpp does; user-defined ones are matched whole but are plain text.
    vocab = tok.get_vocab()
    special = [
        t
        for i, (t, k) in enumerate(zip(tokens, types, strict=True))
        if (k in (UNKNOWN, CONTROL) or i in named) and t in vocab
    ]
    user = [t for t, k in zip(tokens, types, strict=True) if k == USER_DEFINED and t in vocab]
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in user])


def _token_id(f: GGUFFile, key: str, tokens: list[str]) -> int | None:
    value = f.get(f"tokenizer.ggml.{key}")
    return int(value) if value is not None and 0 <= int(value) < len(tokens) else None  # type: ignore[arg-type]


def _post_processor(
    tokens: list[str], bos: int | None, eos: int | None
) -> processors.PostProcessor:
    """Like a Hugging Face tokenizer.json, `encode` itself adds the BOS (and EOS) the model expects."""
    marks = [(tokens[i], i) for i in (bos, eos) if i is not None]
    before = [f"{tokens[bos]}:0"] if bos is not None else []
    after = [f"{tokens[eos]}:0"] if eos is not None else []
    single = " ".join([*before, "$A:0", *after])
    return processors.TemplateProcessing(single=single, special_tokens=marks)


def load_gguf_tokenizer(f: GGUFFile) -> TokenizerInfo | None:
    """The tokenizer a GGUF describes, or None when the file carries no vocabulary."""
    tokens = f.string_array("tokenizer.ggml.tokens")
    if not tokens:
        return None
    kind = str(f.get("tokenizer.ggml.model", ""))
    if kind not in TOKENIZER_MODELS:
        raise UnsupportedModel(
            f"{f.path}: tokenizer.ggml.model is {kind!r}; ferrumc rebuilds: {', '.join(TOKENIZER_MODELS)}"
        )
    tok = TOKENIZER_MODELS[kind](f, tokens)
    bos, eos = _token_id(f, "bos_token_id", tokens), _token_id(f, "eos_token_id", tokens)
    eot, unk = _token_id(f, "eot_token_id", tokens), _token_id(f, "unknown_token_id", tokens)
    pad = _token_id(f, "padding_token_id", tokens)
    types = f.int_array("tokenizer.ggml.token_type") or [1] * len(tokens)
    _add_special_tokens(tok, tokens, types, {i for i in (bos, eos, eot, unk, pad) if i is not None})
    # llama.cpp adds BOS to SentencePiece vocabularies that do not say otherwise.
    add_bos = bool(f.get("tokenizer.ggml.add_bos_token", kind == "llama")) and bos is not None
    add_eos = bool(f.get("tokenizer.ggml.add_eos_token", False)) and eos is not None
    tok.post_processor = _post_processor(tokens, bos if add_bos else None, eos if add_eos else None)

    names = {"bos_token": bos, "eos_token": eos, "unk_token": unk, "pad_token": pad}
    return TokenizerInfo(
        tokenizer_json=tok.to_str(),
        chat_template=f.get("tokenizer.chat_template"),  # type: ignore[arg-type]
        bos_token=tokens[bos] if bos is not None else None,
        eos_token=tokens[eos] if eos is not None else None,
        bos_token_id=bos,
        eos_token_ids=tuple(dict.fromkeys(i for i in (eos, eot) if i is not None)),
        pad_token_id=pad,
        add_bos_token=add_bos,
        template_vars={k: tokens[i] for k, i in names.items() if i is not None},
    )
