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
    """Compile MODEL into a bundle (-o, else the compile cache); --emit-ir prints the optimized graph."""
    if not emit_ir:
        from .codegen.compile import compile_command

        click.echo(str(compile_command(model, target, dtype, output, dump_ir)))
        return
    from .frontend.resolve import load_model
    from .ir.types import DType
    from .passes.pipeline import CompileOptions, optimize

    loaded = load_model(model)
    module = optimize(loaded.graph(), CompileOptions(dtype=DType(dtype)), dump_dir=dump_ir)
    click.echo(str(module), nl=False)


@main.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@friendly_errors
def verify(bundle: Path) -> None:
    """Check every hash in BUNDLE (manifest, library, tokenizer, each weight)."""
    from .codegen.bundle import verify_bundle

    click.echo(f"OK {verify_bundle(bundle).summary()}")


@main.command()
@click.argument("model")
@friendly_errors
def pull(model: str) -> None:
    """Fetch MODEL (an alias such as `smollm2` or a Hugging Face id) into the local cache."""
    from .frontend.pull import pull as do_pull

    click.echo(str(do_pull(model)))


def launch_options(fn: F) -> F:
    """--target, --dtype and --interpreter: how `run` and `bench` open MODEL or BUNDLE."""
    fn = click.option(
        "--interpreter",
        is_flag=True,
        help="Run with the numpy interpreter instead of compiled code (slow; needs no TVM).",
    )(fn)
    fn = click.option("--dtype", type=click.Choice(DTYPES), default="f32", show_default=True)(fn)
    return click.option("-t", "--target", default="llvm", show_default=True)(fn)  # type: ignore[return-value]


@main.command()
@click.argument("model")
@launch_options
@click.option("--system", help="System message opening the conversation.")
@click.option("--temperature", type=float, default=0.7, show_default=True, help="0 is greedy.")
@click.option("--top-p", type=float, default=0.95, show_default=True)
@click.option("--max-tokens", type=int, help="Per answer (default: up to the context window).")
@click.option("--seed", type=int, help="Seed the sampler for reproducible answers.")
@click.option("--stats", is_flag=True, help="Print token counts and speed after each answer.")
@friendly_errors
def run(
    model: str,
    target: str,
    dtype: str,
    interpreter: bool,
    system: str | None,
    temperature: float,
    top_p: float,
    max_tokens: int | None,
    seed: int | None,
    stats: bool,
) -> None:
    """Chat with MODEL (or a compiled BUNDLE) in the terminal, using its chat template."""
    from .runtime.chat_cli import ChatOptions, run_chat
    from .runtime.engine import Engine
    from .runtime.launch import LaunchOptions, launch
    from .runtime.types import SamplingParams

    launch_opts = LaunchOptions(target, dtype, interpreter, max_batch_size=1)
    opened = launch(model, launch_opts)
    params = SamplingParams(temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=seed)
    engine = Engine(opened.executor, opened.tokenizer, max_batch_size=1, seed=seed)
    run_chat(opened, engine, ChatOptions(system=system, sampling=params, show_stats=stats))


@main.command()
@click.argument("model")
@launch_options
@click.option("--prompt-tokens", type=int, default=128, show_default=True)
@click.option("--decode-tokens", type=int, default=32, show_default=True)
@click.option("--batch", type=int, default=4, show_default=True, help="Second decode run's batch.")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
@friendly_errors
def bench(
    model: str,
    target: str,
    dtype: str,
    interpreter: bool,
    prompt_tokens: int,
    decode_tokens: int,
    batch: int,
    as_json: bool,
) -> None:
    """Measure prefill and decode tok/s, load-to-first-token time and peak RSS of MODEL or BUNDLE."""
    from .runtime.bench import BenchOptions, run_bench
    from .runtime.launch import LaunchOptions, launch

    options = BenchOptions(prompt_tokens=prompt_tokens, decode_tokens=decode_tokens, batch=batch)
    sizes = (options.batch, options.cache_tokens(), options.prefill_chunk_size)
    launch_opts = LaunchOptions(target, dtype, interpreter, *sizes)
    result = run_bench(lambda: launch(model, launch_opts), options)
    click.echo(result.to_json() if as_json else result.to_text())


@main.command()
@click.argument("model", required=False, default="smollm2")
@launch_options
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=int, default=8000, show_default=True, help="0 picks a free port.")
@click.option("--api-key", help="Require `Authorization: Bearer KEY` on /v1 routes.")
@click.option("--served-model-name", help="The `model` clients send (default: MODEL as given).")
@click.option("--max-batch-size", type=int, default=4, show_default=True)
@click.option(
    "--max-waiting", type=int, default=64, show_default=True, help="Queued beyond the batch: 503."
)
@friendly_errors
def serve(
    model: str,
    target: str,
    dtype: str,
    interpreter: bool,
    host: str,
    port: int,
    api_key: str | None,
    served_model_name: str | None,
    max_batch_size: int,
    max_waiting: int,
) -> None:
    """Serve MODEL or BUNDLE (default: the embedded SmolLM2) with an OpenAI-compatible API."""
    from .runtime.launch import LaunchOptions
    from .server.app import ServerSettings
    from .server.serve import ServeOptions
    from .server.serve import serve as run_server

    settings = ServerSettings(api_key=api_key, max_waiting=max_waiting)
    launch_opts = LaunchOptions(
        target=target, dtype=dtype, interpreter=interpreter, max_batch_size=max_batch_size
    )
    options = ServeOptions(host, port, served_model_name, settings=settings)
    run_server(model, launch_opts, options)


if __name__ == "__main__":
    main()
