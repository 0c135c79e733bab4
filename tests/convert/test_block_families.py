"""Diffusion checkpoints: SDAR (Qwen3 weights, in-vocabulary <|MASK|>, block_size) and
Fast-dLLM v2 (Qwen2.5 weights, |<MASK>| added to the tokenizer, bd_size, token shift), read
under the block-causal mask of their own decoders, and Dream (Qwen2.5 weights, mask_token_id,
bidirectional attention); goldens from scripts/make_hf_fixtures.py."""

import numpy as np
import pytest

from bdiff import convert, masks, runs
from bdiff.models import embed_rows, make_model
from tests.convert.conftest import (assert_same_tensors, export_with_configs, fixture_dir,
                                   golden)
from tests.convert.test_hf_parity import ATOL, RTOL

# family -> (mask id, q/k norm, q/k/v bias, token shift, strategy, config.json block key)
EXPECTED = {
    "sdar": (3, True, False, False, "sdar_dynamic", "block_size"),
    "fast_dllm_v2": (300, False, True, True, "fast_dllm_v2", "bd_size"),
}
BLOCK_FAMILIES = sorted(EXPECTED)


def forward(cfg, params, tokens, block):
  n = tokens.shape[1]
  positions = np.broadcast_to(np.arange(n, dtype=np.int32), tokens.shape)
  out = make_model(cfg.model).apply({"params": params}, tokens, positions,
                                    masks.block_causal(n, n, block))
  return np.asarray(out)


@pytest.mark.parametrize("family", BLOCK_FAMILIES)
def test_config_carries_the_family_keys(family):
  mask, qk_norm, bias, shift, strategy, _ = EXPECTED[family]
  cfg = convert.hf_config(fixture_dir(family))
  assert (cfg.model.mask_token_id, cfg.model.qk_norm, cfg.model.qkv_bias) == (mask, qk_norm, bias)
  assert embed_rows(cfg.model) == 384  # no appended row: the vocabulary padded to 128
  assert (cfg.diffusion.block_size, cfg.diffusion.token_shift) == (4, shift)
  assert cfg.sample.strategy == strategy


@pytest.mark.parametrize("family", BLOCK_FAMILIES)
def test_logits_under_block_causal_mask_equal_reference(converted, family):
  g = golden(family)
  assert (g["input_ids"] == EXPECTED[family][0]).any()
  cfg, params, _ = runs.restore_params(converted(family))
  logits = forward(cfg, params, g["input_ids"], int(g["block_size"]))
  np.testing.assert_allclose(logits, g["logits"], rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("family", BLOCK_FAMILIES)
def test_export_is_the_family_format_and_bit_exact(converted, family, tmp_path):
  out = str(tmp_path / "export")
  hf, original = export_with_configs(converted(family), family, out)
  assert (hf["architectures"], hf["model_type"]) == (original["architectures"],
                                                     original["model_type"])
  block_key = EXPECTED[family][5]
  assert (hf[block_key], hf["mask_token_id"]) == (4, EXPECTED[family][0])
  assert_same_tensors(fixture_dir(family), out)


def test_sdar_sampler_fills_blocks_from_the_checkpoints_mask_token(converted):
  """The sampler writes the checkpoint's [MASK] (id 3), not an appended row: its first token
  is the argmax of a block-causal forward over [prompt ; MASK x 4]."""
  cfg, params, tok = runs.restore_params(converted("sdar"))
  cfg.sample.update(strategy="ar", max_new_tokens=4, stop_at_eos=False)
  prompt = golden("sdar")["input_ids"][0, :8]
  out, _ = runs.Sampler(cfg, params, tok).generate_batch([prompt], [0], batch_size=1, width=8)
  tokens = np.concatenate([prompt, [3] * 4])[None]
  assert out["tokens"][0, 0] == int(np.argmax(forward(cfg, params, tokens, 4)[0, 8]))
  # What the old "MASK = vocab_size" would have read (a padding row) predicts otherwise.
  appended = np.where(tokens == 3, cfg.model.vocab_size, tokens)
  assert out["tokens"][0, 0] != int(np.argmax(forward(cfg, params, appended, 4)[0, 8]))


def test_fast_dllm_sampler_shifts_and_reads_its_mask_token(converted):
  """Token shift: token 8 is the prefill's last prediction; token 9 is read at position 8 of
  the block [t8, MASK, MASK, MASK] (the model's |<MASK>| = 300)."""
  cfg, params, tok = runs.restore_params(converted("fast_dllm_v2"))
  cfg.sample.update(strategy="ar", max_new_tokens=4, stop_at_eos=False)
  prompt = golden("fast_dllm_v2")["input_ids"][0, :8]
  out, _ = runs.Sampler(cfg, params, tok).generate_batch([prompt], [0], batch_size=1, width=8)
  first = int(np.argmax(forward(cfg, params, prompt[None], 4)[0, 7]))
  assert out["tokens"][0, 0] == first
  block = np.concatenate([prompt, [first, 300, 300, 300]])[None]
  assert out["tokens"][0, 1] == int(np.argmax(forward(cfg, params, block, 4)[0, 8]))


@pytest.mark.parametrize("row", [0, 1])
def test_fast_dllm_v2_decode_equals_its_reference(converted, row):
  """bdiff's ``fast_dllm_v2`` strategy on the converted checkpoint == Fast-dLLM v2's own greedy
  block decoding (threshold 0.9 in sub-blocks, token shift, first token of each block from the
  previous block's forward), token for token, for a prompt ending inside a block (6 tokens)
  and one ending at a block boundary (8). The first row commits two tokens in one step (6
  masked positions in 5 steps), so the threshold rule is exercised, not only top-1."""
  g = golden("fast_dllm_v2")
  assert g["decode_min_margin"] > 1e-3  # no decision of the reference is a float-rounding tie
  prompt = g["decode_prompts"][row][g["decode_prompts"][row] >= 0]
  want = g["decode_generated"][row][g["decode_generated"][row] >= 0]
  cfg, params, tok = runs.restore_params(converted("fast_dllm_v2"))
  assert (cfg.sample.strategy, cfg.sample.threshold, cfg.sample.sub_block,
          cfg.sample.first_token_from_commit) == ("fast_dllm_v2", 0.9, 4, True)
  cfg.sample.update(max_new_tokens=len(want), stop_at_eos=False)
  out, _ = runs.Sampler(cfg, params, tok).generate_batch([prompt], [0], batch_size=1, width=8)
  np.testing.assert_array_equal(out["tokens"][0, :len(want)], want)


@pytest.mark.parametrize("row", [0, 1])
def test_sdar_sequential_decode_equals_its_reference(converted, row):
  """bdiff's ``sequential`` strategy on the converted SDAR checkpoint == SDAR's own
  ``block_diffusion_generate`` with ``sequential`` remasking, one token per step, top_k=1
  (its deterministic setting), token for token: block-causal cache, in-vocabulary [MASK], a
  prompt ending inside a block (6 tokens) and at a block boundary (8)."""
  g = golden("sdar")
  assert g["decode_min_margin"] > 1e-3  # no reference choice is a float-rounding tie
  prompt = g["decode_prompts"][row][g["decode_prompts"][row] >= 0]
  want = g["decode_generated"][row]
  cfg, params, tok = runs.restore_params(converted("sdar"))
  cfg.sample.update(strategy="sequential", max_new_tokens=len(want), stop_at_eos=False)
  out, _ = runs.Sampler(cfg, params, tok).generate_batch([prompt], [0], batch_size=1, width=8)
  np.testing.assert_array_equal(out["tokens"][0, :len(want)], want)


def test_dream_is_bidirectional_with_its_mask_token(converted):
  """Dream: Qwen2.5 weights, its mask_token_id, full attention over the sequence (its own
  regime, recorded as model.attention) and token shift; logits equal the reference."""
  cfg = convert.hf_config(fixture_dir("dream"))
  assert (cfg.model.attention, cfg.model.mask_token_id, cfg.model.qkv_bias) == (
      "bidirectional", 3, True)
  assert cfg.diffusion.token_shift and cfg.diffusion.block_size == cfg.train.seq_len
  g = golden("dream")
  assert int(g["block_size"]) == 0 and (g["input_ids"] == 3).any()
  cfg, params, _ = runs.restore_params(converted("dream"))
  positions = np.broadcast_to(np.arange(12, dtype=np.int32), g["input_ids"].shape)
  logits = make_model(cfg.model).apply({"params": params}, g["input_ids"], positions, None)
  np.testing.assert_allclose(np.asarray(logits), g["logits"], rtol=RTOL, atol=ATOL)


def test_dream_export_and_full_attention_sampler(converted, tmp_path):
  out = str(tmp_path / "export")
  hf, _ = export_with_configs(converted("dream"), "dream", out)
  assert (hf["architectures"], hf["model_type"], hf["mask_token_id"]) == (["DreamModel"],
                                                                          "Dream", 3)
  assert "block_size" not in hf and "bd_size" not in hf
  assert_same_tensors(fixture_dir("dream"), out)
  # A full-attention model is sampled by the semi-autoregressive full-attention loop.
  config = runs.Sampler.from_run(converted("dream")).config
  assert config.full_attention and config.token_shift and config.cache_mode == "none"
