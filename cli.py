"""The `ferrumc` command line: thin click commands over the frontend, passes and (later) codegen."""

from __future__ import annotations

import functools
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import click

from . import __version__
from .errors import FerrumError

if TYPE_CHECKING:
    from .passes.quantization import Int4Quantization

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
    """Print a checkpoint's architecture, parameter count, dtypes and tokenizer facts
    (for a compiled bundle: its target, compile options, quantization and weight sizes)."""
    if (Path(model) / "manifest.json").is_file():
        inspect_bundle(Path(model))
        return
    from .frontend.quant_summary import int4_aux_names, num_parameters, quantization_lines
    from .frontend.resolve import load_model

    loaded = load_model(model, keep_int4=True)  # show Q4_0 / Q4_1 GGUF linears as int4
    cfg = loaded.config
    click.echo(f"source:        {loaded.source} ({loaded.format})")
    click.echo(f"architecture:  {cfg.model_type}")
    click.echo(f"parameters:    {num_parameters(loaded):,}")
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
    aux = int4_aux_names(loaded)  # an int4 linear's scales, zeros, perm: not checkpoint tensors
    storage = {
        n: loaded.weights.storage.get(n, t.dtype.value)
        for n, t in loaded.weights.types.items()
        if n not in aux
    }
    counts = Counter(storage.values())
    click.echo("weights:       " + ", ".join(f"{n} {k}" for k, n in counts.most_common()))
    for line in quantization_lines(loaded):
        click.echo(line)
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


def inspect_bundle(bundle: Path) -> None:
    """`ferrumc inspect BUNDLE`: what was compiled, how, and what its weights weigh by dtype."""
    from .codegen.bundle import read_manifest

    m = read_manifest(bundle)
    cfg = m.model["config"]
    click.echo(f"bundle:        {bundle} ({m.name}, from {m.model['source']})")
    click.echo(f"architecture:  {cfg['model_type']}, {cfg['num_layers']} layers")
    click.echo(f"target:        {m.target['name']} ({m.target.get('machine', '?')})")
    click.echo(f"compute dtype: {m.options.get('dtype', 'f32')}")
    if m.kv_cache:
        from .ir.types import FLOAT_DTYPES

        layers, heads, dim = (m.kv_cache[k] for k in ("num_layers", "num_kv_heads", "head_dim"))
        # The manifest names TVM's dtype, which is numpy's name for it.
        stored = next((d for d in FLOAT_DTYPES if d.numpy.name == m.kv_cache["dtype"]), None)
        name, width = (stored.value, stored.numpy.itemsize) if stored else (m.kv_cache["dtype"], 4)
        per_token = 2 * layers * heads * dim * width
        click.echo(
            f"KV cache:      {name}, {per_token / 1024:g} KiB per token "
            f"({layers} layers x {heads} KV heads x {dim})"
        )
    q = m.options.get("quantize")
    if q is None:
        click.echo("quantization:  none")
    else:
        how = f"{q['quantizer']}" + (", act-order" if q.get("act_order") else "")
        if "calibration" in q:
            windows = "x".join(map(str, q["calibration_tokens"]))
            how += f", calibrated on {q['calibration']} text, {windows} tokens"
        click.echo(f"quantization:  {q['method']} group {q['group_size']} {q['scheme']} ({how})")
    sizes: dict[str, list[int]] = {}
    for p in m.params:
        count_bytes = sizes.setdefault(p.dtype, [0, 0])
        count_bytes[0] += 1
        count_bytes[1] += p.nbytes
    total = sum(b for _, b in sizes.values())
    parts = [f"{d} {n} ({b / 2**20:.1f} MiB)" for d, (n, b) in sorted(sizes.items())]
    click.echo(f"weights:       {total / 2**20:.1f} MiB: " + ", ".join(parts))
    if "u4" in sizes:  # int4 weights, quantized here or loaded so
        x = m.options.get("int4_activations", "float")  # bundles from before the option: float
        how = "rounded to int8 per 32 inputs where the CPU has VNNI" if x == "int8" else "in float"
        click.echo(f"int4 linears:  x {how} (--int4-activations {x})")


def quantize_options(fn: F) -> F:
    """-q int4 and how: --group-size, --scheme, --quantizer, GPTQ's --act-order and --calibration;
    --int4-activations, which int4 checkpoints heed without -q."""
    options = [
        click.option(
            "-q",
            "--quantize",
            type=click.Choice(("none", "int4")),
            default="none",
            show_default=True,
            help="Store the linears' weights in 4 bits (weight-only, grouped).",
        ),
        click.option(
            "--group-size",
            type=click.Choice(("32", "64", "128")),
            help="int4: input columns sharing one scale  [default: 32]",
        ),
        click.option(
            "--scheme",
            type=click.Choice(("symmetric", "asymmetric")),
            help="int4: zero fixed at 8, or a zero per group  [default: symmetric]",
        ),
        click.option(
            "--quantizer",
            type=click.Choice(("rtn", "gptq")),
            help="int4: round to nearest, or GPTQ on calibration text  [default: rtn]",
        ),
        click.option("--act-order", is_flag=True, help="gptq: columns by activation size."),
        click.option(
            "--calibration",
            type=click.Path(exists=True, dir_okay=False, path_type=Path),
            help="gptq: a text file to calibrate on (default: the shipped text).",
        ),
        # passes.pipeline.INT4_ACTIVATIONS, spelled out: importing it would slow every command.
        click.option(
            "--int4-activations",
            type=click.Choice(("int8", "float")),
            default="int8",
            show_default=True,
            help="Int4 linears on CPU: x rounded to int8 per 32 inputs (fast, as llama.cpp's "
            "Q4_0), or kept float (exact). Applies to int4 checkpoints too.",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def int4_choice(
    quantize: str,
    group_size: str | None,
    scheme: str | None,
    quantizer: str | None,
    act_order: bool,
    calibration: Path | None,
) -> Int4Quantization | None:
    """The quantization the flags ask for; a flag that does not apply is a usage error naming it."""
    from .ir.int4 import Int4Format
    from .passes.quantization import GPTQOptions, Int4Quantization

    given = {"--group-size": group_size, "--scheme": scheme, "--quantizer": quantizer}
    given |= {"--act-order": act_order or None, "--calibration": calibration}
    if quantize == "none":
        if flags := [k for k, v in given.items() if v is not None]:
            raise click.UsageError(f"{', '.join(flags)} apply to int4 only; add -q int4")
        return None
    gptq_only = [k for k in ("--act-order", "--calibration") if given[k] is not None]
    if quantizer != "gptq" and gptq_only:
        raise click.UsageError(f"{', '.join(gptq_only)} apply to GPTQ only; add --quantizer gptq")
    fmt = Int4Format(int(group_size or 32), symmetric=scheme != "asymmetric")
    gptq = GPTQOptions(act_order=act_order, calibration=calibration)
    return Int4Quantization(fmt, quantizer or "rtn", gptq)


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
# passes.rewrite_paged_attention.KV_DTYPES, spelled out as --int4-activations' choices are.
@click.option(
    "--kv-dtype",
    type=click.Choice(("f32", "f16")),
    help="Store the KV cache in this dtype: f16 halves its memory and what each decode step's "
    "attention reads, rounding keys and values to f16.  [default: the compute dtype]",
)
@quantize_options
@friendly_errors
def compile(
    model: str,
    target: str,
    dtype: str,
    emit_ir: bool,
    dump_ir: Path | None,
    output: Path | None,
    kv_dtype: str | None,
    int4_activations: str,
    **int4: object,
) -> None:
    """Compile MODEL into a bundle (-o, else the compile cache); --emit-ir prints the optimized graph."""
    quantize = int4_choice(**int4)  # type: ignore[arg-type]
    if not emit_ir:
        from .codegen.compile import compile_command

        path = compile_command(
            model, target, dtype, output, dump_ir, quantize, int4_activations, kv_dtype
        )
        click.echo(str(path))
        return
    from .frontend.resolve import load_model
    from .passes.calibration import pass_context
    from .passes.pipeline import CompileOptions, optimize

    loaded = load_model(model, keep_int4=quantize is not None)  # as compile_model loads it
    options = CompileOptions.from_flags(dtype, quantize, kv_dtype=kv_dtype)
    module = optimize(loaded.graph(), options, dump_ir, ctx=pass_context(loaded))
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
    """--target, --dtype, --threads and --interpreter: how `run`, `bench` and `serve` open MODEL."""
    fn = click.option(
        "--threads",
        type=click.IntRange(min=1),
        help="Worker threads for compiled kernels (default: every core this process may use; "
        "fewer avoids stalls when other work shares the cores).",
    )(fn)
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
    threads: int | None,
) -> None:
    """Chat with MODEL (or a compiled BUNDLE) in the terminal, using its chat template."""
    from .runtime.chat_cli import ChatOptions, run_chat
    from .runtime.engine import Engine
    from .runtime.launch import LaunchOptions, launch
    from .runtime.types import SamplingParams

    launch_opts = LaunchOptions(target, dtype, interpreter, max_batch_size=1, threads=threads)
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
    threads: int | None,
) -> None:
    """Measure prefill and decode tok/s, load-to-first-token time and peak RSS of MODEL or BUNDLE."""
    from .runtime.bench import BenchOptions, run_bench
    from .runtime.launch import LaunchOptions, launch

    options = BenchOptions(prompt_tokens=prompt_tokens, decode_tokens=decode_tokens, batch=batch)
    sizes = (options.batch, options.cache_tokens(), options.prefill_chunk_size)
    launch_opts = LaunchOptions(target, dtype, interpreter, *sizes, threads=threads)
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
@click.option(
    "--drain-timeout",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    help="Seconds in-flight requests get to finish after Ctrl-C or SIGTERM.",
)
@click.option(
    "--prefix-cache",
    type=click.IntRange(min=0),
    default=8,
    show_default=True,
    help="Finished requests kept in the KV cache, so that a prompt starting like one of them "
    "(a chat's next turn) skips that part of its prefill; they give way when pages run short. "
    "0: off.",
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
    drain_timeout: float,
    prefix_cache: int,
    threads: int | None,
) -> None:
    """Serve MODEL or BUNDLE (default: the embedded SmolLM2) with an OpenAI-compatible API."""
    from .runtime.launch import LaunchOptions
    from .server.app import ServerSettings
    from .server.serve import ServeOptions
    from .server.serve import serve as run_server

    settings = ServerSettings(api_key=api_key, max_waiting=max_waiting)
    launch_opts = LaunchOptions(
        target=target,
        dtype=dtype,
        interpreter=interpreter,
        max_batch_size=max_batch_size,
        threads=threads,
    )
    options = ServeOptions(host, port, served_model_name, drain_timeout, settings, prefix_cache)
    run_server(model, launch_opts, options)


if __name__ == "__main__":
    main()
