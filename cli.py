"""The `ferrumc` command line: thin click commands over the frontend, passes and (later) codegen."""

from __future__ import annotations

import functools
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import click

from . import __version__
from .errors import FerrumError

F = TypeVar("F", bound=Callable[..., object])

DTYPES = ("f32", "f16", "bf16")


def friendly_errors(fn: F) -> F:
    """Print ferrumc's own errors as one line and exit non-zero, never as a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: object, **kwargs: object) -> object:
        try:
            return fn(*args, **kwargs)
        except FerrumError as e:
            first, _, rest = str(e).partition("\n")
            click.echo(f"error: {first}", err=True)
            if rest:
                click.echo(rest, err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)

    return wrapper  # type: ignore[return-value]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ferrumc")
def main() -> None:
    """Compile LLM checkpoints ahead of time and serve them with an OpenAI-compatible API.

    MODEL may be a Hugging Face checkpoint directory, a .gguf file, a Hugging Face id found in
    the local cache (org/name), or an alias such as `smollm2`.
    """


@main.command()
@click.argument("model")
@friendly_errors
def inspect(model: str) -> None:
    """Print a checkpoint's architecture, parameter count, dtypes and tokenizer facts."""
    from .frontend.resolve import load_model

    loaded = load_model(model)
    cfg = loaded.config
    click.echo(f"source:        {loaded.source} ({loaded.format})")
    click.echo(f"architecture:  {cfg.model_type}")
    click.echo(f"parameters:    {loaded.weights.num_parameters():,}")
    click.echo(
        f"shape:         {cfg.num_layers} layers, hidden {cfg.hidden_size}, heads {cfg.num_heads} "
        f"(kv {cfg.num_kv_heads}), head_dim {cfg.head_dim}, intermediate {cfg.intermediate_size}"
    )
    if cfg.is_moe:
        click.echo(
            f"experts:       {cfg.num_experts} (top {cfg.num_experts_per_tok}), "
            f"expert intermediate {cfg.moe_intermediate_size}, sparse layers {len(cfg.moe_layers)}"
        )
    rope = cfg.rope_scaling.kind if cfg.rope_scaling else "default"
    click.echo(f"rope:          theta {cfg.rope_theta:g}, scaling {rope}")
    click.echo(
        f"context:       {cfg.max_position_embeddings}"
        + (f", sliding window {cfg.sliding_window}" if cfg.sliding_window else "")
    )
    storage = getattr(loaded.weights, "storage", None) or {
        n: t.dtype.value for n, t in loaded.weights.types.items()
    }
    counts = Counter(storage.values())
    click.echo("weights:       " + ", ".join(f"{n} {k}" for k, n in counts.most_common()))
    tok = loaded.tokenizer
    if tok is None:
        click.echo("tokenizer:     none found")
    else:
        from tokenizers import Tokenizer

        vocab = Tokenizer.from_str(tok.tokenizer_json).get_vocab_size(with_added_tokens=True)
        click.echo(
            f"tokenizer:     vocab {vocab}, bos {tok.bos_token!r}, eos {tok.eos_token!r} "
            f"(ids {list(tok.eos_token_ids)}), chat template: {'yes' if tok.chat_template else 'no'}"
        )


@main.command()
@click.argument("model")
@click.option("-t", "--target", default="llvm", show_default=True, help="Target to compile for.")
@click.option(
    "--dtype", type=click.Choice(DTYPES), default="f32", show_default=True, help="Compute dtype."
)
@click.option(
    "--emit-ir", is_flag=True, help="Print the optimized IR instead of building a bundle."
)
@click.option(
    "--dump-ir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Write the IR after each pass here.",
)
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Bundle to write.")
@friendly_errors
def compile(
    model: str, target: str, dtype: str, emit_ir: bool, dump_ir: Path | None, output: Path | None
) -> None:
    """Compile MODEL for a target (with --emit-ir: print the optimized graph)."""
    from .frontend.resolve import load_model
    from .ir.types import DType
    from .passes.pipeline import CompileOptions, optimize

    loaded = load_model(model)
    module = optimize(loaded.graph(), CompileOptions(dtype=DType(dtype)), dump_dir=dump_ir)
    if emit_ir:
        click.echo(str(module), nl=False)
        return
    raise click.UsageError(
        "building bundles is not available yet: use --emit-ir to print the optimized IR"
    )


@main.command()
@click.argument("model")
@friendly_errors
def pull(model: str) -> None:
    """Fetch MODEL (an alias such as `smollm2` or a Hugging Face id) into the local cache."""
    from .frontend.pull import pull as do_pull

    click.echo(str(do_pull(model)))


if __name__ == "__main__":
    main()
