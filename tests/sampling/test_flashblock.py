"""FlashBlock attention caching (``sample.cache="flashblock"``) in the block-causal loop.

The log-space merge is checked against one attention over the union of the key sets; the loop
on the tiny sharpened model of ``sampling_common`` (threshold rule sampled at T = 1, ragged
prompts). Bounds fixed from the method's definition:

* refreshing the external part every step (``cache_refresh=1``) attends the cache in every
  forward: the exact loop (``none`` = ``exact``) token for token;
* with one layer a still-masked position keeps its first-step query ([MASK] at the same
  position) and the cache is fixed while a block is denoised, so the cached external part is
  the one a fresh forward would compute: exact on an unshifted model (a part kept for the
  wrong row, layer or block would change the tokens);
* with two layers the queries above the first layer change as the block fills: drift is
  measured and reported, the work (positions) is the exact loop's.
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sampling_common import random_prompts, sharpened_params, tiny_config

from bdiff import attention, masks
from bdiff.models import make_model
from bdiff.sampling import drift as drift_lib
from bdiff.sampling import generate as gen
from bdiff.sampling.config import validate_run_sample_config

V, WIDTH, NEW, BLOCK = 23, 7, 10, 4
LENGTHS = np.array([7, 3, 5, 4], np.int32)
IDS = np.array([11, 12, 13, 14], np.int32)


def make_cfg(n_layers=2, **sample):
  cfg = tiny_config(V, BLOCK, n_layers=n_layers)
  cfg.sample.update(max_new_tokens=NEW, strategy="threshold", threshold=0.3, temperature=1.0,
                    cache="flashblock")
  cfg.sample.update(**sample)
  return cfg


def sampler(n_layers=2, **sample):
  cfg = make_cfg(n_layers, **sample)
  validate_run_sample_config(cfg)
  return gen.SamplerConfig.from_config(cfg, eos_id=None)


def as_np(out):
  return jax.tree.map(np.asarray, out)


def _qkv(seed, b=2, lq=4, lk=10, h=4, hkv=2, d=8):
  """fp32 q, k, v (numpy draws: eager jax.random costs a compile per call)."""
  rng = np.random.default_rng(seed)
  draw = lambda *shape: rng.standard_normal(shape).astype(np.float32)  # noqa: E731
  return 2 * draw(b, lq, h, d), 2 * draw(b, lk, hkv, d), draw(b, lk, hkv, d)


def test_merge_of_disjoint_parts_equals_attention_over_their_union():
  """Three disjoint key sets (GQA, a runtime mask with a row empty in one part and a row empty
  in all of them): merged (O, LSE) = one attention over the union; empty rows 0 and -inf."""
  q, k, v = _qkv(0)
  allowed = np.random.default_rng(1).random((2, 4, 10)) < 0.6
  allowed[0, 1, :4] = False
  allowed[1, 2] = False

  @jax.jit
  def both(q, k, v, allowed):
    parts = [attention.attend_with_lse(q, k[:, a:b], v[:, a:b], allowed[..., a:b])
             for a, b in ((0, 4), (4, 7), (7, 10))]
    return attention.xla_attention(q, k, v, allowed, return_lse=True), \
        attention.merge_attention(*parts)

  (ref, ref_lse), (out, lse) = both(q, k, v, allowed)
  np.testing.assert_allclose(out, ref, atol=1e-6)
  np.testing.assert_allclose(lse, ref_lse, atol=1e-5)
  assert np.isneginf(lse[1, :, 2]).all() and (out[1, 2] == 0).all()
  assert np.isfinite(out).all()


@pytest.mark.parametrize("impl, backend", [("xla", None), ("pallas", "reference")])
def test_split_at_the_cache_equals_one_attention(impl, backend):
  """The sampler's cached forward (CacheWindow + per-row cache validity) computed as cache
  part + window part, fresh or with the cache part reused, equals one attention."""
  q, k, v = _qkv(2, lk=6 + 4)
  mask = masks.cache_window(4, 6, 2)
  kv_seg = jnp.array([[1, 1, 1, 0, 0, 0] + [1] * 4, [0] * 6 + [1] * 4], jnp.int32)
  seg = (jnp.ones((2, 4), jnp.int32), kv_seg)
  window, cache = (k[:, 6:], v[:, 6:]), (k[:, :6], v[:, :6])
  kw = dict(impl=impl, segment_ids=seg, backend=backend)

  @jax.jit
  def run():
    out, ext = attention.attend_split(q, window, cache, mask, **kw)
    again, _ = attention.attend_split(q, window, cache, mask, ext=ext, **kw)
    return attention.xla_attention(q, k, v, mask, segment_ids=seg), out, ext, again

  ref, out, ext, again = run()
  np.testing.assert_allclose(out, ref, atol=1e-6)
  np.testing.assert_allclose(again, ref, atol=1e-6)
  assert np.isneginf(ext[1][1]).all()  # row 1 has no valid cache key: an empty part


def test_lse_needs_a_backend_that_returns_it():
  q, k, v = _qkv(3)
  with pytest.raises(ValueError, match="impl"):
    attention.attend_with_lse(q, k, v, impl="cudnn")


@pytest.fixture(scope="module")
def params():
  return sharpened_params(make_cfg().model)


@pytest.fixture(scope="module")
def prompts():
  return random_prompts(V, WIDTH)


@pytest.fixture(scope="module")
def drift(params, prompts):
  return drift_lib.measure_drift(params, prompts, jax.random.key(3), sampler(), LENGTHS, IDS)


def test_model_hook_returns_and_reuses_the_cache_part(params):
  """Same queries: the split forward and the one reusing its cache part give the plain
  forward's logits (fp32 rounding); the hook refuses a call without a cache."""
  model = make_model(make_cfg().model)
  apply = lambda *a, **kw: model.apply({"params": params}, *a, **kw)  # noqa: E731
  ctx = np.random.default_rng(4).integers(0, V, (2, 8), dtype=np.int32)
  _, kv = jax.jit(lambda x: apply(x, jnp.broadcast_to(jnp.arange(8), (2, 8)),
                                  masks.block_causal(8, 8, 4), return_kv=True))(ctx)
  win = jnp.array([[V, 3, V, V], [V, V, 5, V]])
  pos = jnp.broadcast_to(8 + jnp.arange(4), (2, 4))
  seg = (jnp.ones((2, 4), jnp.int32), jnp.array([[1] * 12, [1] * 4 + [0] * 4 + [1] * 4]))
  call = lambda **kw: apply(win, pos, masks.cache_window(4, 8, 4), cache=kv,  # noqa: E731
                            segment_ids=seg, **kw)

  @jax.jit
  def three():
    split, ext = call(return_attn_ext=True)
    return call(), split, ext, call(attn_ext=ext)

  ref, split, ext, reused = three()
  assert ext[0].shape == (2, 2, 4, 2, 16) and ext[1].dtype == jnp.float32
  np.testing.assert_allclose(split, ref, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(reused, ref, rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="cache"):
    apply(win, pos, masks.full(4, 4), return_attn_ext=True)


def test_refreshing_every_step_equals_the_exact_loop(params, prompts, drift):
  out = as_np(gen.generate(params, prompts, jax.random.key(3), sampler(cache_refresh=1),
                           LENGTHS, IDS))
  ref = drift["ref"]  # cache="none", which the sampler's tests hold equal to "exact"
  for key in ("tokens", "num_tokens", "nfe_denoise", "nfe_commit"):
    np.testing.assert_array_equal(out[key], ref[key], err_msg=key)


def test_one_layer_flashblock_is_exact(prompts):
  config = sampler(n_layers=1)
  one = sharpened_params(config.model)
  d = drift_lib.measure_drift(one, prompts, jax.random.key(3), config, LENGTHS, IDS)
  np.testing.assert_array_equal(d["out"]["tokens"], d["ref"]["tokens"])
  np.testing.assert_array_equal(d["out"]["nfe_denoise"], d["ref"]["nfe_denoise"])
  assert d["drift"] == 0.0 and d["cache"] == "flashblock"


def test_drift_is_reported_and_work_is_the_exact_loops(drift, prompts, params):
  d = drift
  print(f"flashblock: drift {d['drift']:.3f}, positions {d['positions']} (none: "
        f"{d['ref_positions']}), forwards {d['forwards']} (none: {d['ref_forwards']})")
  assert d["cache"] == "flashblock" and 0.0 <= d["drift"] <= 1.0
  assert d["out"]["done"].all() and (d["out"]["num_tokens"] == NEW).all()
  # Every forward computes the block's B positions, as the exact loop's does.
  forwards = d["out"]["nfe_denoise"] + d["out"]["nfe_commit"]
  prefill = LENGTHS // BLOCK * BLOCK
  np.testing.assert_array_equal(d["out"]["positions_computed"], prefill + BLOCK * forwards)


def test_rows_do_not_depend_on_the_batch(params, prompts, drift):
  """Ragged rows decode the same in another order beside other rows (new prompts, lengths and
  ids) as in the original batch: each row refreshes at its own iterations and its logits come
  from its own branch. Same batch shape, so no new compile."""
  config = sampler()
  full = drift["out"]
  assert len(set(full["nfe_denoise"].tolist())) > 1  # rows follow different schedules
  others = random_prompts(V, WIDTH, rows=2)[:, ::-1]
  for group in (np.array([2, 0]), np.array([3, 1])):
    x = np.concatenate([prompts[group], others])
    lengths = np.concatenate([LENGTHS[group], [2, 6]]).astype(np.int32)
    ids = np.concatenate([IDS[group], [21, 22]]).astype(np.int32)
    out = as_np(gen.generate(params, x, jax.random.key(3), config, lengths, ids))
    for key in ("tokens", "nfe_denoise", "nfe_commit"):
      np.testing.assert_array_equal(out[key][:2], full[key][group], err_msg=f"{key} {group}")


@pytest.mark.parametrize("model, sample, key", [
    (dict(), dict(commit="fused"), "sample.commit"),
    (dict(attention_impl="cudnn"), dict(), "model.attention_impl"),
    (dict(attention="bidirectional"), dict(), "sample.cache"),
    (dict(), dict(use_cache=False), "sample.use_cache"),
])
def test_bad_combinations_name_the_key(model, sample, key):
  cfg = make_cfg(**sample)
  cfg.model.update(**model)
  with pytest.raises(ValueError, match=key):
    validate_run_sample_config(cfg)


def test_flashblock_is_never_the_default():
  cfg = make_cfg(cache="auto")
  validate_run_sample_config(cfg)
  assert gen.SamplerConfig.from_config(cfg).cache_mode == "exact"
  assert dataclasses.replace(sampler(), cache="auto").cache_mode == "exact"
