"""The jit-compiled sampler: exact cache, batch invariance, tracing, sharding (decoding.md §3.6).

A random-init tiny model is enough: exactness and invariance are properties of the loop, not
of the weights. Its embeddings, attention and MLP outputs are scaled up 3x so that outputs
depend on the context (at init the residual stream is dominated by the token's own embedding
and every [MASK] decodes alike) and confidences are spread: a threshold of 0.3 then commits
several tokens in some steps and one in others.
"""
import dataclasses

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bdiff import masks
from bdiff.config import base_config
from bdiff.models import make_model
from bdiff.sampling import generate as gen
from bdiff.sampling.config import validate_sample_config

V = 23
WIDTH, NEW = 7, 10
LENGTHS = np.array([7, 3, 5, 4], np.int32)


def make_cfg(block=4, **sample):
  cfg = base_config()
  cfg.model.update(d_model=32, n_layers=2, n_heads=2, n_kv_heads=1, head_dim=16, mlp_dim=64,
                   dtype="float32", vocab_size=V)
  cfg.diffusion.block_size = block
  cfg.sample.update(max_new_tokens=NEW, strategy="threshold", threshold=0.3)
  cfg.sample.update(**sample)
  return cfg


@pytest.fixture(scope="module")
def params():
  model = make_model(make_cfg().model)
  z = jnp.zeros((1, 8), jnp.int32)
  init = jax.jit(model.init, static_argnums=3)
  params = nn.meta.unbox(init(jax.random.key(0), z, z, masks.causal(8)))["params"]
  sharpen = {"embed", "q", "k", "v", "o", "down"}
  return jax.tree_util.tree_map_with_path(
      lambda path, x: x * 3.0 if sharpen & {getattr(k, "key", None) for k in path} else x,
      params)


@pytest.fixture(scope="module")
def prompts():
  return np.asarray(jax.random.randint(jax.random.key(1), (4, WIDTH), 0, V), np.int32)


def sampler(block=4, shift=False, **sample):
  cfg = make_cfg(block, **sample)
  cfg.diffusion.token_shift = shift
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
# first generated block. Kept to five cases: each costs two compiles.
CASES = {
    "ar_b1": dict(block=1, strategy="ar"),
    "static_b3": dict(block=3, strategy="static", steps=2, confidence="margin"),
    "fast_dllm_v2_b4": dict(block=4, strategy="fast_dllm_v2", sub_block=2, threshold=0.25),
    "threshold_shift_first_token_b4": dict(block=4, shift=True, first_token_from_commit=True),
    "threshold_shift_fused_b2": dict(block=2, shift=True, commit="fused"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_cache_equals_no_cache_reference(params, prompts, case):
  kw = dict(CASES[case])
  config = sampler(**kw)
  ref_config = dataclasses.replace(config, use_cache=False)
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


def test_row_output_does_not_depend_on_batch(params, prompts):
  # Sampled (T = 1), so the row's RNG stream must follow its row id, not its batch slot.
  config = sampler(4, temperature=1.0)
  rng = jax.random.key(7)
  batch = as_np(gen.generate(params, prompts, rng, config, LENGTHS, row_ids=[10, 11, 12, 13]))
  r = 2
  alone = as_np(gen.generate(params, prompts[r:r + 1, :LENGTHS[r]], rng, config,
                             row_ids=[10 + r]))
  np.testing.assert_array_equal(alone["tokens"][0], batch["tokens"][r])
  assert alone["nfe_denoise"][0] == batch["nfe_denoise"][r]


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
    (dict(first_token_from_commit=True), "sample.first_token_from_commit"),
    (dict(strategy="adablock", delimiter_ids=(1,)), "sample.strategy"),
])
def test_bad_settings_name_the_key(override, key):
  cfg = make_cfg(4, **override)
  with pytest.raises(ValueError, match=key):
    validate_sample_config(cfg.sample, block_size=4, token_shift=False)
  with pytest.raises(ValueError, match=key):
    gen.SamplerConfig.from_config(cfg)


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
