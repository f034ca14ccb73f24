"""Tokenizer files and generation_config.json -> TokenizerInfo."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from tokenizers import Tokenizer, processors

from ferrumc.errors import CheckpointError
from ferrumc.frontend.hf import load_hf
from ferrumc.frontend.hf_tokenizer import load_tokenizer, token_ids
from ferrumc.tests.tiny_checkpoints import BOS_ID, CHATML_TEMPLATE, EOS_ID, IM_END_ID


def copy(src: Path, dst: Path) -> Path:
    return Path(shutil.copytree(src, dst))


def edit_json(path: Path, **fields: object) -> None:
    data = json.loads(path.read_text()) if path.is_file() else {}
    path.write_text(json.dumps({**data, **fields}))


def test_llama_tokenizer(tiny_checkpoint) -> None:
    folder = tiny_checkpoint("llama")
    tok = load_hf(folder).tokenizer
    assert tok is not None
    assert tok.tokenizer_json == (folder / "tokenizer.json").read_text()
    assert (tok.bos_token, tok.bos_token_id) == ("<s>", BOS_ID)
    assert (tok.eos_token, tok.eos_token_ids) == ("</s>", (EOS_ID,))
    assert tok.pad_token_id == 0 and tok.add_bos_token is False and tok.chat_template is None
    assert tok.template_vars == {
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": "<unk>",
    }
    assert Tokenizer.from_str(tok.tokenizer_json).get_vocab_size() == 256


def test_qwen2_chat_template_file_and_eos(tiny_checkpoint) -> None:
    tok = load_hf(tiny_checkpoint("qwen2")).tokenizer
    assert tok.chat_template == CHATML_TEMPLATE
    assert tok.eos_token == "<|im_end|>" and tok.eos_token_ids == (IM_END_ID,)


def test_template_in_tokenizer_config_and_named_templates(tiny_checkpoint, tmp_path: Path) -> None:
    folder = copy(tiny_checkpoint("qwen3"), tmp_path / "m")
    edit_json(folder / "tokenizer_config.json", chat_template="{{ messages }}")
    assert load_tokenizer(folder, {}, {}).chat_template == "{{ messages }}"
    named = [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]
    edit_json(folder / "tokenizer_config.json", chat_template=named)
    assert load_tokenizer(folder, {}, {}).chat_template == "D"
    (folder / "chat_template.jinja").write_text("J")  # the standalone file wins
    assert load_tokenizer(folder, {}, {}).chat_template == "J"


def test_eos_list_from_generation_config(tiny_checkpoint, tmp_path: Path) -> None:
    folder = copy(tiny_checkpoint("mistral"), tmp_path / "m")
    edit_json(folder / "generation_config.json", eos_token_id=[IM_END_ID, EOS_ID, 3])
    model = load_hf(folder)
    assert model.tokenizer.eos_token_ids == (EOS_ID, IM_END_ID, 3)
    assert model.generation["eos_token_id"] == [IM_END_ID, EOS_ID, 3]
    assert token_ids(None) == [] and token_ids(7) == [7]


def test_add_bos_token_from_config_or_post_processor(tiny_checkpoint, tmp_path: Path) -> None:
    folder = copy(tiny_checkpoint("llama"), tmp_path / "m")
    edit_json(folder / "tokenizer_config.json", add_bos_token=True)
    assert load_tokenizer(folder, {}, {}).add_bos_token is True
    edit_json(folder / "tokenizer_config.json", add_bos_token=None)
    assert load_tokenizer(folder, {}, {}).add_bos_token is False
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", BOS_ID)]
    )
    tokenizer.save(str(folder / "tokenizer.json"))
    assert load_tokenizer(folder, {}, {}).add_bos_token is True


def test_no_tokenizer_and_bad_tokenizer(tiny_checkpoint, tmp_path: Path) -> None:
    folder = copy(tiny_checkpoint("llama"), tmp_path / "m")
    (folder / "tokenizer.json").write_text('{"model": 3}')
    with pytest.raises(CheckpointError, match=r"tokenizer.json is not a valid tokenizers file"):
        load_tokenizer(folder, {}, {})
    (folder / "tokenizer.json").unlink()
    assert load_hf(folder).tokenizer is None
