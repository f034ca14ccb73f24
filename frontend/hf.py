"""The Hugging Face frontend: a checkpoint directory (config, safetensors, tokenizer) to a LoadedModel."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ..errors import CheckpointError
from .gptq import load_gptq_weights
from .hf_config import load_hf_config
from .hf_tokenizer import load_tokenizer, read_json
from .hf_weights import map_weights, stored_dtype
from .model import LoadedModel
from .models import architecture, build_graph
from .quant_config import quantization_config
from .safetensors_io import SafetensorsCheckpoint


def load_hf(path: Path) -> LoadedModel:
    """Read the checkpoint in directory `path`; weights stay on disk until loaded by name."""
    directory = Path(path)
    config_path = directory / "config.json"
    if not config_path.is_file():
        what = "directory" if directory.is_dir() else "path (not a directory)"
        raise CheckpointError(
            f"no config.json in {what} {directory}; expected a Hugging Face checkpoint directory "
            "with config.json, model.safetensors (or model.safetensors.index.json and its shards) "
            "and tokenizer.json"
        )
    config = load_hf_config(config_path)
    arch = architecture(config.model_type)
    ckpt = SafetensorsCheckpoint(directory)
    # The graph declares weights as they are stored: config.json's dtype only records what the
    # model was trained in, and a checkpoint saved in another dtype must not be rounded on load.
    stored = stored_dtype(ckpt, arch)
    if stored is not None and stored is not config.weight_dtype:
        config = dataclasses.replace(config, weight_dtype=stored)
    model_config = read_json(config_path)
    quant = quantization_config(directory, model_config)
    if quant is None:
        quantized = {}
        expected = build_graph(config).weight_types()
        weights = map_weights(ckpt, arch, expected, config.tie_word_embeddings)
    else:  # int4 linears stay int4 (frontend/gptq.py)
        quantized, weights = load_gptq_weights(ckpt, arch, config, quant)
    generation = read_json(directory / "generation_config.json")
    return LoadedModel(
        source=directory,
        format="hf",
        config=config,
        weights=weights,
        tokenizer=load_tokenizer(directory, generation, model_config),
        generation=generation,
        quantized=quantized,
    )
