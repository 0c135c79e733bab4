"""The sampler's forwards compute what training computed, for both attention regimes.

Training (``two_stream_logits``) gives the noisy logits of block ``b`` from the clean blocks
before it, computed block-causally (BD3-LM) or token-causally (``diffusion.context_causal``,
NBDiff-style). The sampler builds the same clean context from its cache: the (chunked) prompt
prefill and the commit pass of a finished block must follow the model's regime, and the no-cache
reference must too. Each test compares the sampler's block logits with training's on the tiny
sharpened random model (fp32).
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sampling_common import sharpened_params, tiny_config

from bdiff.models import make_model, two_stream_logits
from bdiff.sampling import cache as cache_lib
from bdiff.sampling import generate as gen

V, B, N = 23, 4, 16
# fp32; the tolerance tests/models/test_transformer.py uses for the same comparison.
TOL = dict(rtol=2e-5, atol=2e-5)
MODES = {"separate": dict(), "fused": dict(commit="fused"), "no_cache": dict(use_cache=False)}


def sampler_config(cc: bool, prompt_len: int, **sample) -> gen.SamplerConfig:
  cfg = tiny_config(V, B)
  cfg.diffusion.context_causal = cc
  cfg.sample.update(max_new_tokens=N - prompt_len, strategy="threshold", threshold=0.3,
                    prefill_chunk=B, **sample)  # one block per prefill forward: 2 chunks
  return gen.SamplerConfig.from_config(cfg)


@pytest.fixture(scope="module")
def params():
  return sharpened_params(tiny_config(V, B).model)


@pytest.fixture(scope="module")
def x0():
  return np.asarray(jax.random.randint(jax.random.key(3), (2, N), 0, V), np.int32)


def training_block_logits(params, x0, cc, clean_len, block):
  """Noisy logits of ``block`` with clean tokens before ``clean_len``, [MASK] after."""
  model = make_model(tiny_config(V, B).model)
  xt = np.where(np.arange(N) < clean_len, x0, V)
  noisy, _ = two_stream_logits(model, {"params": params}, jnp.asarray(xt), jnp.asarray(x0), B,
                               context_causal=cc)
  return np.asarray(noisy[:, block * B:(block + 1) * B])


def sampler_state(params, x0, config, prompt_len):
  lengths = np.full((2,), prompt_len, np.int32)
  init = jax.jit(gen.initial_state, static_argnames="config")
  return init(params, jnp.asarray(x0[:, :prompt_len]), jax.random.key(0), lengths,
              jnp.arange(2, dtype=jnp.int32), config=config)


def block_logits(params, state, config):
  return jax.jit(gen.loop_forward, static_argnames="config")(params, state, config=config)


@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("cc", [False, True], ids=["block_causal", "context_causal"])
def test_prefill_then_denoise_equals_training(params, x0, cc, mode):
  """Prompt of 9 tokens: two whole blocks prefilled in two chunks, a tail in block 2."""
  config = sampler_config(cc, 9, **MODES[mode])
  state = sampler_state(params, x0, config, 9)
  logits = np.asarray(block_logits(params, state, config)[0])
  want = training_block_logits(params, x0, cc, 9, block=2)
  np.testing.assert_allclose(logits, want, **TOL)
  if cc:  # the regimes really differ on this model: the test can tell them apart
    wrong = training_block_logits(params, x0, False, 9, block=2)
    assert np.abs(wrong - want).max() > 1e-2


@pytest.mark.parametrize("cc", [False, True], ids=["block_causal", "context_causal"])
def test_commit_pass_then_denoise_equals_training(params, x0, cc):
  """Block 2 filled with clean tokens, committed by the loop's forward, then block 3 denoised."""
  config = sampler_config(cc, 8)
  state = sampler_state(params, x0, config, 8)
  filled = state.tokens.at[:, 8:12].set(x0[:, 8:12])
  state = state._replace(tokens=filled, needs_commit=jnp.ones((2,), bool))
  _, _, kv = block_logits(params, state, config)  # the commit pass of block 2
  cache = cache_lib.write_blocks(state.cache, kv, state.blk_start, state.needs_commit)
  state = state._replace(cache=cache, blk_start=state.blk_start + B,
                         needs_commit=jnp.zeros((2,), bool))
  logits = np.asarray(block_logits(params, state, config)[0])
  np.testing.assert_allclose(logits, training_block_logits(params, x0, cc, 12, block=3), **TOL)
  # The no-cache reference's commit-pass rows see the same clean context.
  ref = dataclasses.replace(config, use_cache=False)
  ref_state = state._replace(cache=None)
  np.testing.assert_allclose(np.asarray(block_logits(params, ref_state, ref)[0]), logits,
                             **TOL)
