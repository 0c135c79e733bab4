"""Converted checkpoints compute what transformers computes (golden fixtures, float32).

The goldens come from scripts/make_hf_fixtures.py (transformers' own Llama/Qwen2/Qwen3 code,
eager attention, float32); no torch is needed here.
"""
import jax
import numpy as np
import pytest

from bdiff import masks, runs
from bdiff.models import make_model
from tests.convert.conftest import FAMILIES, golden

# float32 forward of two layers with logits of magnitude ~8: rounding differences between
# two correct implementations stay below 1e-5 relative to that scale.
RTOL, ATOL = 1e-5, 5e-5


def causal_logits(workdir: str, tokens: np.ndarray) -> np.ndarray:
  cfg, params, _ = runs.restore_params(workdir)
  n = tokens.shape[1]
  positions = np.broadcast_to(np.arange(n, dtype=np.int32), tokens.shape)
  apply = jax.jit(make_model(cfg.model).apply, static_argnums=(3,))
  return np.asarray(apply({"params": params}, tokens, positions, masks.block_causal(n, n, 1)))


@pytest.mark.parametrize("family", FAMILIES)
def test_logits_equal_transformers(converted, family):
  """Import -> causal forward == transformers' logits on the same ids (every position)."""
  g = golden(family)
  logits = causal_logits(converted(family), g["input_ids"])
  assert logits.shape == g["logits"].shape
  np.testing.assert_allclose(logits, g["logits"], rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_ar_sampler_equals_transformers_generate(converted, family):
  """bdiff's sampler (strategy ar, block 1, token shift, KV cache) == greedy ``generate``."""
  g = golden(family)
  assert g["min_margin"] > 1e-3  # greedy choices are not decided by rounding
  cfg = runs.restore_params(converted(family))[0]
  assert (cfg.diffusion.block_size, cfg.diffusion.token_shift, cfg.sample.strategy) == (
      1, True, "ar")
  cfg.sample.max_new_tokens = g["generated"].shape[1]
  cfg.sample.stop_at_eos = False
  sampler = runs.Sampler.from_run(converted(family), cfg)
  prompts = list(g["prompt_ids"])
  out, _ = sampler.generate_batch(prompts, [0, 1], batch_size=2, width=8)
  np.testing.assert_array_equal(out["tokens"][:, :g["generated"].shape[1]], g["generated"])


@pytest.mark.parametrize("family", FAMILIES)
def test_text_prompt_through_sample_equals_transformers_generate(converted, family):
  """``Sampler.sample`` (what ``bdiff sample`` runs): the prompt text is encoded with the
  checkpoint's tokenizer, no prefix token (it has no BOS), then greedy AR decoding."""
  g = golden(family)
  cfg = runs.restore_params(converted(family))[0]
  assert cfg.sample.prompt_prefix == "none"
  cfg.sample.update(max_new_tokens=g["text_generated"].shape[1], stop_at_eos=False)
  record, = runs.Sampler.from_run(converted(family), cfg).sample(["def add(a, b):"])
  assert record["tokens"] == g["text_generated"][0].tolist()


def test_llama3_rope_scaling_matters(converted):
  """The Llama fixture exercises the Llama-3 frequency rescaling: without it, logits move."""
  g = golden("llama")
  cfg, params, _ = runs.restore_params(converted("llama"))
  cfg.model.rope_scaling.type = "none"
  n = g["input_ids"].shape[1]
  positions = np.broadcast_to(np.arange(n, dtype=np.int32), g["input_ids"].shape)
  logits = make_model(cfg.model).apply({"params": params}, g["input_ids"], positions,
                                       masks.block_causal(n, n, 1))
  assert np.abs(np.asarray(logits) - g["logits"]).max() > 1e-2
