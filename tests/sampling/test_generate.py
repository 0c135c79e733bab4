"""The jit-compiled sampler: exact cache, batch invariance, tracing, sharding.

The tiny sharpened random model of ``sampling_common`` (exactness and invariance are
properties of the loop, not of the weights).
"""
import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sampling_common import sharpened_params, tiny_config

from bdiff import masks
from bdiff.models import make_model
from bdiff.sampling import generate as gen
from bdiff.sampling.config import validate_run_sample_config, validate_sample_config

V = 23
WIDTH, NEW = 7, 10
LENGTHS = np.array([7, 3, 5, 4], np.int32)


def make_cfg(block=4, **sample):
  cfg = tiny_config(V, block)
  cfg.sample.update(max_new_tokens=NEW, strategy="threshold", threshold=0.3)
  cfg.sample.update(**sample)
  return cfg


@pytest.fixture(scope="module")
def params():
  return sharpened_params(make_cfg().model)


@pytest.fixture(scope="module")
def prompts():
  return np.asarray(jax.random.randint(jax.random.key(1), (4, WIDTH), 0, V), np.int32)


def sampler(block=4, shift=False, cc=False, **sample):
  cfg = make_cfg(block, **sample)
  cfg.diffusion.update(token_shift=shift, context_causal=cc)
  validate_run_sample_config(cfg)
  return gen.SamplerConfig.from_config(cfg, eos_id=None)


def as_np(out):
  return jax.tree.map(np.asarray, out)


def check_trace(trace, iterations, mask_id):
  """Committed tokens never change from one forward to the next."""
  trace = trace[:iterations + 1]
  before, after = trace[:-1], trace[1:]
  known = before != mask_id
  assert np.all(after[known] == before[known])


# Block sizes 1-4 against prompt lengths 3-7 (mostly not multiples): prompt tails share the
# first generated block. Some cases prefill one block per forward (chunked prefill). The cc_
# cases are context-causal models (token-causal clean stream): per-row commit/denoise masks in
# separate mode, the clean-then-noisy window in fused mode. Each case costs two compiles.
CASES = {
    "ar_b1_chunked": dict(block=1, strategy="ar", prefill_chunk=1),
    "static_b3": dict(block=3, strategy="static", steps=2, confidence="margin"),
    "fast_dllm_v2_b4": dict(block=4, strategy="fast_dllm_v2", sub_block=2, threshold=0.25),
    "threshold_shift_first_token_b4": dict(block=4, shift=True, first_token_from_commit=True),
    "threshold_shift_fused_b2_chunked": dict(block=2, shift=True, commit="fused",
                                             prefill_chunk=2),
    "cc_threshold_b2_chunked": dict(block=2, cc=True, prefill_chunk=2),
    "cc_threshold_shift_fused_b2": dict(block=2, cc=True, shift=True, commit="fused"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_cache_equals_no_cache_reference(params, prompts, case):
  kw = dict(CASES[case])
  config = sampler(**kw)
  ref_config = dataclasses.replace(config, cache="none")  # sample.cache="none"
  rng = jax.random.key(3)
  out = as_np(gen.generate(params, prompts, rng, config, LENGTHS, trace=True))
  ref = as_np(gen.generate(params, prompts, rng, ref_config, LENGTHS, trace=True))
  np.testing.assert_array_equal(out["tokens"], ref["tokens"])
  # Same schedule step by step: the cache changes no decision, not just the final text.
  np.testing.assert_array_equal(out["trace"], ref["trace"])
  assert out["done"].all()
  assert (out["num_tokens"] == NEW).all()
  assert not (out["tokens"] == config.mask_id).any()
  check_trace(out["trace"], int(out["iterations"]), config.mask_id)
  blocks_touched = -(-(LENGTHS + NEW) // config.block_size) - LENGTHS // config.block_size
  if config.commit == "separate":  # one commit pass per block except the last
    np.testing.assert_array_equal(out["nfe_commit"], blocks_touched - 1)
  else:
    assert (out["nfe_commit"] == 0).all()
  np.testing.assert_allclose(out["tokens_per_forward"],
                             NEW / (out["nfe_denoise"] + out["nfe_commit"]), rtol=1e-6)
  if config.strategy.name == "ar":  # the baseline: one token per denoising step
    np.testing.assert_array_equal(out["nfe_denoise"], np.full(4, NEW))


def test_shifted_block1_harvest_is_plain_ar(params, prompts):
  """Block 1, shifted, first token from the commit pass: one forward per token, no denoising."""
  config = sampler(1, shift=True, first_token_from_commit=True, strategy="ar")
  out = as_np(gen.generate(params, prompts, jax.random.key(0), config, LENGTHS))
  assert (out["nfe_denoise"] == 0).all()
  np.testing.assert_array_equal(out["nfe_commit"], np.full(4, NEW - 1))
  # ... and it is greedy AR decoding with a causal mask (= block-causal with block 1).
  model = make_model(config.model)
  n = WIDTH + NEW
  forward = jax.jit(lambda x: model.apply({"params": params}, x, jnp.arange(n)[None],
                                          masks.causal(n)))
  r, p = 1, LENGTHS[1]
  seq = np.zeros((1, n), np.int32)
  seq[0, :p] = prompts[r, :p]
  for t in range(p, p + NEW):
    seq[0, t] = int(jnp.argmax(forward(seq)[0, t - 1]))
  np.testing.assert_array_equal(out["tokens"][r], seq[0, p:p + NEW])


# Sampled (T = 1) strategies with different rules: each row's RNG stream must follow its row
# id, and its schedule its own confidences, whatever else is in the batch.
INVARIANCE = {
    "threshold": dict(temperature=1.0),
    "static_random": dict(strategy="static", steps=2, confidence="random", temperature=1.0),
    "fast_dllm_v2": dict(strategy="fast_dllm_v2", sub_block=2, threshold=0.25, top_k=5,
                         temperature=1.0),
}
BATCH_LENGTHS = np.array([7, 1, 5, 3, 6, 2, 7, 4], np.int32)


@pytest.mark.parametrize("name", sorted(INVARIANCE))
def test_row_output_does_not_depend_on_batch(params, name):
  """Every row decodes identically in batches of 8, 4 and 2 (shuffled) and alone."""
  config = sampler(4, **INVARIANCE[name])
  rng = jax.random.key(7)
  x = np.asarray(jax.random.randint(jax.random.key(5), (8, WIDTH), 0, V), np.int32)
  ids = np.arange(100, 108, dtype=np.int32)

  def run(rows, width=WIDTH):
    rows = np.asarray(rows)
    return as_np(gen.generate(params, x[rows, :width], rng, config, BATCH_LENGTHS[rows],
                              ids[rows]))

  full = run(np.arange(8))
  if config.strategy.name != "static":  # adaptive rules: rows follow different schedules
    assert len(set(full["nfe_denoise"].tolist())) > 1
  order = np.array([5, 2, 7, 0, 3, 6, 1, 4])
  for size in (4, 2):
    for group in order.reshape(-1, size):
      out = run(group)
      for key in ("tokens", "num_tokens", "nfe_denoise", "nfe_commit"):
        np.testing.assert_array_equal(out[key], full[key][group], err_msg=f"{key} {group}")
  for r in (1, 6):  # alone, at the row's own prompt width (a shorter buffer and cache)
    alone = run([r], width=BATCH_LENGTHS[r])
    np.testing.assert_array_equal(alone["tokens"][0], full["tokens"][r])
    assert alone["nfe_denoise"][0] == full["nfe_denoise"][r]


def test_stop_tokens_end_rows(params, prompts):
  stops = (3, 18)  # tokens this random model emits at different places in different rows
  config = dataclasses.replace(sampler(4), stop_ids=stops)
  out = as_np(gen.generate(params, prompts, jax.random.key(0), config, LENGTHS))
  ref = as_np(gen.generate(params, prompts, jax.random.key(0),
                           dataclasses.replace(config, use_cache=False), LENGTHS))
  np.testing.assert_array_equal(out["tokens"], ref["tokens"])
  assert out["done"].all() and len(set(out["num_tokens"].tolist())) > 1
  for row, n in zip(out["tokens"], out["num_tokens"]):
    assert row[n - 1] in stops or n == NEW
    assert not np.isin(row[:n - 1], stops).any()
    assert (row[n:] == gen.NO_TOKEN).all() and (row[:n] >= 0).all()
    assert not (row[:n] == config.mask_id).any()


def test_generate_traces_once_per_shape(params, prompts):
  config = sampler(4)
  fn = jax.jit(chex.assert_max_traces(gen.generate_fn, n=1), static_argnames=("config",))
  ids = jnp.arange(4, dtype=jnp.int32)
  for seed in range(3):
    x = jnp.asarray((prompts + seed) % V)
    fn(params, x, jax.random.key(seed), jnp.asarray(LENGTHS), ids, config=config)


@pytest.mark.parametrize("override, key", [
    (dict(strategy="nope"), "sample.strategy"),
    (dict(threshold=1.5), "sample.threshold"),
    (dict(threshold=0.0), "sample.threshold"),
    (dict(block_size=8), "sample.block_size"),
    (dict(commit="lazy"), "sample.commit"),
    (dict(strict="maybe"), "sample.strict"),
    (dict(prompt_prefix="bos_eos"), "sample.prompt_prefix"),
    (dict(prefill_chunk=0), "sample.prefill_chunk"),
    (dict(max_prompt_len=-1), "sample.max_prompt_len"),
    (dict(first_token_from_commit=True), "sample.first_token_from_commit"),
    (dict(strategy="adablock", delimiter_ids=(1,)), "sample.strategy"),
])
def test_bad_settings_name_the_key(override, key):
  cfg = make_cfg(4, **override)
  with pytest.raises(ValueError, match=key):
    validate_sample_config(cfg.sample, block_size=4, token_shift=False)
  with pytest.raises(ValueError, match=key):  # the full-config check runs the same validator
    validate_run_sample_config(cfg)


@pytest.mark.parametrize("sample, key", [
    (dict(), "sample.commit"), (dict(use_cache=False), "sample.use_cache")])
def test_context_causal_per_row_masks_refuse_pallas(sample, key):
  """Separate-mode commit passes need a per-row mask, which the Pallas plan cannot take."""
  cfg = make_cfg(4, **sample)
  cfg.diffusion.context_causal = True
  cfg.model.attention_impl = "pallas"
  with pytest.raises(ValueError, match=key):
    validate_run_sample_config(cfg)
  cfg.sample.update(commit="fused", use_cache=True)
  validate_run_sample_config(cfg)  # the fused window is one static mask: allowed


def test_sharded_equals_unsharded(params):
  from bdiff import sharding
  cfg = make_cfg(4)
  mesh = sharding.make_mesh(cfg.mesh)
  assert mesh.shape["data"] == 8
  config = gen.SamplerConfig.from_config(cfg)
  x = np.asarray(jax.random.randint(jax.random.key(5), (8, WIDTH), 0, V), np.int32)
  lengths = np.array([7, 3, 5, 4, 6, 1, 2, 7], np.int32)
  ids = np.arange(8, dtype=np.int32)
  rng = jax.random.key(9)
  with jax.set_mesh(mesh):
    sharded = gen.make_sharded_generate(config, mesh)(params, x, rng, lengths, ids)
  assert sharded["tokens"].sharding.spec[0] == ("data", "fsdp")
  plain = gen.generate(params, x, rng, config, lengths, ids)
  for key in ("tokens", "nfe_denoise", "nfe_commit"):
    np.testing.assert_array_equal(np.asarray(sharded[key]), np.asarray(plain[key]))
