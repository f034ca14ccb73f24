"""A model's Hugging Face chat template, rendered and encoded the way transformers' apply_chat_template does.

Rendering matches transformers 5 byte for byte: the same sandboxed Jinja environment (trim_blocks,
lstrip_blocks, loopcontrols, `{% generation %}`), the same globals (raise_exception, strftime_now,
namespace, dict) and `tojson` filter, the same message clean-up (None-valued keys dropped,
reasoning fields aliased) and the tokenizer's special tokens as variables.

Encoding follows `apply_chat_template(..., sanitize_control_tokens=True)`: control tokens spelled
inside client text (`<|im_end|>` in a user message) are wrapped in private-use markers before
rendering, so after rendering they can be told apart from the ones the template wrote, and are
encoded as plain text. Control tokens are the special added tokens plus the added tokens that
appear in the template's literal text (Qwen3's `<think>`, `<tool_call>`, ...).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any, NoReturn

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.utils
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer

from ..errors import RequestError
from ..frontend.model import TokenizerInfo

Message = Mapping[str, Any]

# transformers' markers (utils/chat_template_utils.py), so a chat marked by either encodes the same.
MARK_START, MARK_END = "\U000f0000", "\U000f0001"

# Names a message's reasoning may come under; templates read `reasoning_content` (gpt-oss: `thinking`).
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


class ChatTemplateError(RequestError):
    """The template refused the conversation (raise_exception) or failed on it."""


def _raise_exception(message: str) -> NoReturn:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(
    x: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    # Jinja's own tojson escapes HTML characters; templates expect plain JSON.
    return json.dumps(
        x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


class _TemplateDict:
    """`dict(...)` for templates without exposing the type itself."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict.fromkeys(*args, **kwargs)


class _TemplateNamespace(jinja2.utils.Namespace):
    """A namespace refusing underscore-prefixed attributes (no route to CPython internals)."""

    def __init__(
        *args: Any, **kwargs: Any
    ) -> None:  # Jinja's signature trick: `namespace(self=...)`
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check_name(name: object) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(
                f"chat templates cannot store underscore-prefixed attributes on a namespace: {name!r}"
            )


class _Generation(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}` marks assistant text for training masks; here it renders its body."""

    tags = {"generation"}  # noqa: RUF012 (Jinja reads it as a class attribute)

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        call = self.call_method("_body")
        return jinja2.nodes.CallBlock(call, [], [], body).set_lineno(lineno)

    def _body(self, caller: Any) -> str:
        return caller()


@lru_cache(maxsize=32)
def compile_template(template: str) -> jinja2.Template:
    """The compiled template, in transformers' sandbox; raises ChatTemplateError on a syntax error."""
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_Generation, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["dict"] = _TemplateDict()
    env.globals["namespace"] = _TemplateNamespace
    try:
        return env.from_string(template)
    except jinja2.exceptions.TemplateSyntaxError as e:
        raise ChatTemplateError(
            f"the model's chat template does not parse: line {e.lineno}: {e.message}"
        ) from None


def _plain(value: Any) -> Any:
    """A copy made of JSON types only: the sandboxed template never sees a caller's objects."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, Mapping):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return f"<{type(value).__name__}>"


def _clean_messages(messages: Sequence[Message]) -> list[dict[str, Any]]:
    """transformers' clean-up: None-valued keys dropped, reasoning copied under every name templates read."""
    cleaned = []
    for message in messages:
        m = {k: _plain(v) for k, v in message.items() if v is not None}
        reasoning = next((m[k] for k in _REASONING_FIELDS if m.get(k) is not None), None)
        if reasoning is not None:
            m = {"thinking": reasoning, **m, "reasoning_content": reasoning}
        cleaned.append(m)
    return cleaned


def render_chat(
    template: str,
    messages: Sequence[Message],
    *,
    add_generation_prompt: bool,
    bos_token: str | None,
    eos_token: str | None,
    tools: Sequence[Mapping[str, Any]] | None = None,
    documents: Sequence[Mapping[str, Any]] | None = None,
    **extra: Any,
) -> str:
    """The prompt text `template` makes of `messages`, as transformers' apply_chat_template(tokenize=False).

    `extra` holds further template variables: the tokenizer's other special tokens (unk_token, ...)
    and request options such as Qwen3's `enable_thinking`.
    """
    if not messages:
        raise ChatTemplateError("a chat needs at least one message")
    # A tokenizer without a BOS token leaves `bos_token` undefined (it renders as ""), as in transformers.
    specials = {"bos_token": bos_token, "eos_token": eos_token}
    variables = {**{k: v for k, v in specials.items() if v is not None}, **_plain(extra)}
    try:
        return compile_template(template).render(
            messages=_clean_messages(messages),
            tools=_plain(tools),
            documents=_plain(documents),
            add_generation_prompt=add_generation_prompt,
            **variables,
        )
    except jinja2.exceptions.TemplateError as e:  # raise_exception(...), undefined names, sandbox
        raise ChatTemplateError(f"the model's chat template refused the messages: {e}") from None
    except (TypeError, ValueError, AttributeError, IndexError, KeyError) as e:
        # A template doing arithmetic or string methods on a value of the wrong type.
        raise ChatTemplateError(
            f"the model's chat template failed on the messages: {type(e).__name__}: {e}"
        ) from None


def template_literal_text(template: str) -> str:
    """The template's raw text and string constants, NUL-joined so a search never spans two."""
    env = compile_template(template).environment
    ast = env.parse(template)
    literals = {node.data for node in ast.find_all(jinja2.nodes.TemplateData)}
    literals |= {n.value for n in ast.find_all(jinja2.nodes.Const) if isinstance(n.value, str)}
    return "\0".join(sorted(literals))


def _alternation(tokens: Sequence[str]) -> str:
    """A regex matching any of `tokens`, longest first so a token wins over the tokens it contains."""
    return "|".join(map(re.escape, sorted(tokens, key=len, reverse=True))) or "(?!)"


class ChatEncoder:
    """A model's chat template and tokenizer: messages -> prompt text, and -> token ids with client text kept text."""

    def __init__(self, tokenizer: Tokenizer, info: TokenizerInfo) -> None:
        if info.chat_template is None:
            raise ChatTemplateError(
                "this model has no chat template; use /v1/completions with a plain prompt"
            )
        self.template = info.chat_template
        self.info = info
        self.variables = {**info.template_vars}
        self.variables.update(bos_token=info.bos_token, eos_token=info.eos_token)
        self._tokenizer = tokenizer
        added = tokenizer.get_added_tokens_decoder()
        self._added_ids = {t.content: i for i, t in added.items()}
        literal = template_literal_text(self.template)
        control = [
            t.content
            for t in added.values()
            if t.special or (t.content in literal and not t.content.isspace())
        ]
        self.control_tokens = tuple(control)
        self._control_re = re.compile(_alternation(control))
        # A marked added token, or a marker a string method in the template split off its pair.
        self._markers_re = re.compile(
            f"{MARK_START}({_alternation(list(self._added_ids))}){MARK_END}|[{MARK_START}{MARK_END}]"
        )
        self._newline_ids = self._tokenizer.encode("\n", add_special_tokens=False).ids

    def render(
        self,
        messages: Sequence[Message],
        *,
        add_generation_prompt: bool = True,
        tools: Sequence[Mapping[str, Any]] | None = None,
        **extra: Any,
    ) -> str:
        variables = {**self.variables, **extra}
        return render_chat(
            self.template,
            messages,
            add_generation_prompt=add_generation_prompt,
            tools=tools,
            **variables,
        )

    def encode(
        self,
        messages: Sequence[Message],
        *,
        add_generation_prompt: bool = True,
        tools: Sequence[Mapping[str, Any]] | None = None,
        **extra: Any,
    ) -> list[int]:
        """Prompt token ids; a control token the client spelled is encoded as the text it is."""
        marked = self.render(
            self._mark(messages),
            add_generation_prompt=add_generation_prompt,
            tools=self._mark(tools),
            **self._mark(extra),
        )
        return self._encode_marked(marked)

    def _mark(self, obj: Any) -> Any:
        """Wrap control tokens in client strings with markers (markers already there are dropped)."""
        if isinstance(obj, str):
            obj = obj.replace(MARK_START, "").replace(MARK_END, "")
            return self._control_re.sub(f"{MARK_START}\\g<0>{MARK_END}", obj)
        if isinstance(obj, Mapping):
            return {k: self._mark(v) for k, v in obj.items()}
        if isinstance(obj, list | tuple):
            return [self._mark(v) for v in obj]
        return obj

    def _encode_marked(self, chat: str) -> list[int]:
        # split() gives [text, marked token, text, ...], None in place of the token for a lone marker.
        pieces = self._markers_re.split(chat)
        ids = self._tokenizer.encode(pieces[0], add_special_tokens=False).ids
        for i, piece in enumerate(pieces[1:], start=1):
            if not piece:
                continue
            as_text = i % 2 == 1
            piece_ids = self._encode_piece(piece, as_text)
            if as_text and self._added_ids.get(piece) in piece_ids:
                raise ChatTemplateError(
                    f"cannot keep {piece!r} as text: this tokenizer produces it from plain text"
                )
            ids += piece_ids
        return ids

    def _encode_piece(self, piece: str, as_text: bool) -> list[int]:
        encode = self._encode_without_added_tokens if as_text else self._encode
        # Encoded after a newline, then the newline dropped, so a SentencePiece tokenizer does not
        # add the prefix space it adds at the start of a string (transformers does the same).
        ids = encode("\n" + piece)
        n = len(self._newline_ids)
        if ids[:n] == self._newline_ids:
            return ids[n:]
        return encode(piece)

    def _encode(self, text: str) -> list[int]:
        return self._tokenizer.encode(text, add_special_tokens=False).ids

    def _encode_without_added_tokens(self, text: str) -> list[int]:
        # The tokenizer's pipeline minus its added-token matching (`encode_special_tokens` would
        # still match the non-special ones, such as Qwen3's <think>).
        tok = self._tokenizer
        if tok.normalizer is not None:
            text = tok.normalizer.normalize_str(text)
        splits = [text]
        if tok.pre_tokenizer is not None:
            splits = [split for split, _ in tok.pre_tokenizer.pre_tokenize_str(text)]
        return [t.id for split in splits for t in tok.model.tokenize(split)]


def encode_chat(
    tokenizer: Tokenizer,
    info: TokenizerInfo,
    messages: Sequence[Message],
    *,
    add_generation_prompt: bool = True,
    **extra: Any,
) -> list[int]:
    """Prompt token ids for `messages` (one-off; build a ChatEncoder to encode many chats)."""
    return ChatEncoder(tokenizer, info).encode(
        messages, add_generation_prompt=add_generation_prompt, **extra
    )
