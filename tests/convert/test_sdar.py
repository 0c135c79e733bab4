"""SDAR checkpoints: Qwen3 weights with an in-vocabulary [MASK] and a block size, read under
the block-causal mask of SDAR's own generate.py (golden from scripts/make_hf_fixtures.py)."""
import json
import os

import jax
import numpy as np
import pytest

from bdiff import convert, masks, runs
from bdiff.models import embed_rows, make_model
from tests.convert.conftest import fixture_dir, golden
from tests.convert.test_hf_parity import ATOL, RTOL
from tests.convert.test_roundtrip import hf_tensors_on_disk

MASK = 3  # the fixture tokenizer's <|MASK|>


@pytest.fixture(scope="module")
def sdar_run(converted):
  return converted("sdar")


def test_config_carries_the_family_keys():
  cfg = convert.hf_config(fixture_dir("sdar"))
  assert cfg.model.mask_token_id == MASK and cfg.model.qk_norm and not cfg.model.qkv_bias
  assert embed_rows(cfg.model) == 384  # no appended row: 300 tokens, padded to 128
  assert (cfg.diffusion.block_size, cfg.diffusion.token_shift) == (4, False)
  assert cfg.sample.strategy == "sdar_dynamic"


def test_logits_under_block_causal_mask_equal_reference(sdar_run):
  g = golden("sdar")
  assert (g["input_ids"] == MASK).any()
  cfg, params, _ = runs.restore_params(sdar_run)
  tokens = g["input_ids"]
  n = tokens.shape[1]
  positions = np.broadcast_to(np.arange(n, dtype=np.int32), tokens.shape)
  logits = make_model(cfg.model).apply({"params": params}, tokens, positions,
                                       masks.block_causal(n, n, int(g["block_size"])))
  np.testing.assert_allclose(np.asarray(logits), g["logits"], rtol=RTOL, atol=ATOL)


def test_export_is_sdar_format_and_bit_exact(sdar_run, tmp_path):
  out = str(tmp_path / "export")
  convert.export_to_hf(sdar_run, out)
  with open(os.path.join(out, "config.json"), encoding="utf-8") as f:
    hf = json.load(f)
  assert hf["architectures"] == ["SDARForCausalLM"] and hf["model_type"] == "sdar"
  assert (hf["block_size"], hf["mask_token_id"], hf["fuse_cross_entropy"]) == (4, MASK, False)
  original, exported = hf_tensors_on_disk(fixture_dir("sdar")), hf_tensors_on_disk(out)
  assert sorted(exported) == sorted(original)
  for name, value in original.items():
    np.testing.assert_array_equal(exported[name].view(np.uint32), value.view(np.uint32),
                                  err_msg=name)


def test_sampler_fills_blocks_from_the_checkpoints_mask_token(sdar_run):
  """The sampler writes the checkpoint's [MASK] (id 3), not an appended row: its first token
  is the argmax of a block-causal forward over [prompt ; MASK x 4]."""
  cfg, params, _ = runs.restore_params(sdar_run)
  cfg.sample.update(strategy="ar", max_new_tokens=4, stop_at_eos=False, prompt_prefix="none")
  prompt = golden("sdar")["input_ids"][0, :8]
  sampler = runs.Sampler(cfg, params, runs.restore_params(sdar_run)[2])
  out, _ = sampler.generate_batch([prompt], [0], batch_size=1, width=8)
  tokens = np.concatenate([prompt, [MASK] * 4])[None]
  positions = np.arange(12, dtype=np.int32)[None]
  logits = make_model(cfg.model).apply({"params": params}, tokens, positions,
                                       masks.block_causal(12, 12, 4))
  assert out["tokens"][0, 0] == int(np.argmax(np.asarray(logits)[0, 8]))
  appended_row = make_model(cfg.model).apply(  # what the old "MASK = vocab_size" would read
      {"params": params}, np.where(tokens == MASK, cfg.model.vocab_size, tokens), positions,
      masks.block_causal(12, 12, 4))
  assert out["tokens"][0, 0] != int(np.argmax(np.asarray(appended_row)[0, 8]))
  assert out["num_tokens"][0] == 4
