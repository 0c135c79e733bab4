"""A checkpoint bdiff cannot represent exactly is a ValueError naming the tensor or key, raised
before any parameter is allocated."""
import json
import os
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from bdiff import convert
from tests.convert.conftest import fixture_dir, unallocatable_copy


@pytest.fixture
def qwen3_copy(tmp_path, monkeypatch):
  """A writable copy of the Qwen3 fixture; allocating any parameter fails the test."""
  return unallocatable_copy("qwen3", tmp_path, monkeypatch)


def edit_config(hf_dir, **changes):
  path = os.path.join(hf_dir, "config.json")
  with open(path, encoding="utf-8") as f:
    hf = json.load(f)
  hf.update(changes)
  with open(path, "w", encoding="utf-8") as f:
    json.dump(hf, f)


def edit_tensors(hf_dir, fn):
  path = os.path.join(hf_dir, "model.safetensors")
  tensors = load_file(path)
  fn(tensors)
  save_file(tensors, path, metadata={"format": "pt"})


def convert_into(hf_dir, tmp_path):
  return convert.convert_from_hf(hf_dir, str(tmp_path / "run"), progress=False)


@pytest.mark.parametrize("changes,match", [
    (dict(architectures=["MistralForCausalLM"]), "architectures"),
    (dict(model_type="qwen2"), "model_type"),
    (dict(hidden_act="gelu"), "hidden_act"),
    (dict(attention_bias=True), "attention_bias"),
    (dict(use_sliding_window=True), "use_sliding_window"),
    (dict(rope_parameters=dict(rope_type="yarn", rope_theta=1e6, factor=4.0)), "yarn"),
])
def test_unsupported_config_names_the_key(qwen3_copy, tmp_path, changes, match):
  edit_config(qwen3_copy, **changes)
  with pytest.raises(ValueError, match=match):
    convert_into(qwen3_copy, tmp_path)


def test_missing_tensor_is_named(qwen3_copy, tmp_path):
  edit_tensors(qwen3_copy, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
  with pytest.raises(ValueError, match=r"lacks tensor model\.layers\.1\.mlp\.up_proj\.weight"):
    convert_into(qwen3_copy, tmp_path)
  assert not os.path.exists(tmp_path / "run" / "config.json")


def test_extra_tensor_is_named(qwen3_copy, tmp_path):
  edit_tensors(qwen3_copy, lambda t: t.update({"model.layers.0.mlp.extra.weight":
                                               np.zeros((2, 2), np.float32)}))
  with pytest.raises(ValueError, match=r"unexpected tensor model\.layers\.0\.mlp\.extra"):
    convert_into(qwen3_copy, tmp_path)


def test_wrong_shape_is_named(qwen3_copy, tmp_path):
  edit_config(qwen3_copy, intermediate_size=96)
  with pytest.raises(ValueError, match=r"tensor model\.layers\.0\.mlp\.\w+_proj\.weight has "
                                       r"shape \[\d+, \d+\], the config needs"):
    convert_into(qwen3_copy, tmp_path)


def test_architecture_override_is_refused(qwen3_copy, tmp_path):
  cfg = convert.hf_config(qwen3_copy)
  cfg.model.n_layers = 3
  with pytest.raises(ValueError, match="model.n_layers=3 differs from the checkpoint's 2"):
    convert.convert_from_hf(qwen3_copy, str(tmp_path / "run"), cfg, progress=False)


def test_missing_tokenizer_is_named(qwen3_copy, tmp_path):
  os.remove(os.path.join(qwen3_copy, "tokenizer.json"))
  with pytest.raises(ValueError, match="no tokenizer.json"):
    convert_into(qwen3_copy, tmp_path)


def test_not_a_checkpoint_dir(tmp_path):
  with pytest.raises(ValueError, match="no config.json"):
    convert.hf_config(str(tmp_path))


def test_shard_missing_from_index(tmp_path):
  hf_dir = str(tmp_path / "hf")
  shutil.copytree(fixture_dir("llama"), hf_dir)
  os.remove(os.path.join(hf_dir, "model-00002-of-00002.safetensors"))
  with pytest.raises(ValueError, match="model-00002-of-00002.safetensors"):
    convert_into(hf_dir, tmp_path)


def test_existing_run_is_not_overwritten(converted, tmp_path):
  with pytest.raises(ValueError, match="already holds a checkpoint"):
    convert.convert_from_hf(fixture_dir("qwen3"), converted("qwen3"), progress=False)
