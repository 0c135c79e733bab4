"""Elastic-Cache (``sample.cache="elastic"``, arXiv 2510.14973, VILA-Lab/Elastic-Cache) in the
full-attention loop.

Tiny sharpened random full-attention model, ragged prompts, sampled threshold decoding
(T = 1) in a sliding window of the first 4 masks, one block for the whole generation as the
reference decodes. Bounds fixed from the rule:

* one layer: a position's layer input is its token's embedding and its K/V depend on its own
  token only; every position whose token changed since its K/V were written (decoded at the
  previous step) is queried, so every key is exact and the logits are ``none``'s: the same
  tokens as ``cache="none"`` with the same window;
* a drift-triggered refresh starting at layer ``l + 1`` feeds it the cached inputs of the
  non-queried positions, i.e. it recomputes their K/V at that layer from the very inputs
  they were cached from: with two layers no ``gamma`` can change a token (``gamma > 1``
  refreshes layer 1 at every cached step, whose positions count is then known exactly), and
  a gamma above 1 does not make the cache equal ``none`` (the stale inputs stay);
* otherwise the tokens drift from ``none`` (measured) while computing fewer positions.
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sampling_common import sharpened_params, tiny_config

from bdiff.sampling import drift as drift_lib
from bdiff.sampling import elastic_cache
from bdiff.sampling import generate as gen
from bdiff.sampling.config import validate_run_sample_config

V = 23
WIDTH, NEW, WINDOW = 12, 10, 4
LENGTHS = np.array([12, 6, 9, 8], np.int32)  # longer than the query capacity (10)
STOP = 4
IDS = np.arange(40, 44, dtype=np.int32)


def elastic_cfg(n_layers=2, **sample):
  cfg = tiny_config(V, 16, attention="bidirectional", n_layers=n_layers)
  cfg.sample.update(max_new_tokens=NEW, block_size=0, strategy="threshold", threshold=0.7,
                    temperature=1.0, window=WINDOW, cache="elastic")
  cfg.sample.update(**sample)
  return cfg


def sampler(n_layers=2, **sample):
  cfg = elastic_cfg(n_layers, **sample)
  validate_run_sample_config(cfg)
  return gen.SamplerConfig.from_config(cfg, eos_id=STOP)


@pytest.fixture(scope="module")
def params():
  return sharpened_params(elastic_cfg().model)


@pytest.fixture(scope="module")
def prompts():
  return np.asarray(jax.random.randint(jax.random.key(1), (4, WIDTH), 0, V), np.int32)


def run(params, prompts, config, rows=None, width=WIDTH):
  rows = np.arange(4) if rows is None else np.asarray(rows)
  out = gen.generate(params, prompts[rows, :width], jax.random.key(3), config, LENGTHS[rows],
                     IDS[rows])
  return jax.tree.map(np.asarray, out)


@pytest.fixture(scope="module")
def drift(params, prompts):
  """The default rule (gamma 0.9, one tracked token per layer) against ``none`` with the
  same window."""
  config = sampler()
  assert config.cache_gamma == 0.9 and config.cache_track == 1
  return drift_lib.measure_drift(params, prompts, jax.random.key(3), config, LENGTHS, IDS)


def first_layer_only(params):
  """The tiny model with its last layer's output projections zeroed: that layer adds exactly
  nothing to the residual stream, so the network computes its first layer only (same shapes,
  hence the same compiled loops as ``params``)."""
  layers = params["layers"]
  zero_last = lambda w: w.at[-1].set(0.0)  # noqa: E731
  attn = dict(layers["attn"], o=dict(layers["attn"]["o"],
                                     kernel=zero_last(layers["attn"]["o"]["kernel"])))
  mlp = dict(layers["mlp"], down=dict(layers["mlp"]["down"],
                                      kernel=zero_last(layers["mlp"]["down"]["kernel"])))
  return dict(params, layers=dict(layers, attn=attn, mlp=mlp))


def test_one_layer_equals_none(params, prompts):
  d = drift_lib.measure_drift(first_layer_only(params), prompts, jax.random.key(3), sampler(),
                              LENGTHS, IDS)
  for key in ("tokens", "num_tokens", "nfe_denoise"):
    np.testing.assert_array_equal(d["out"][key], d["ref"][key], err_msg=key)
  assert d["drift"] == 0.0 and d["out"]["done"].all()
  assert (d["out"]["positions_computed"] < d["ref"]["positions_computed"]).all()


def test_drift_is_reported_and_work_saved(drift):
  print(f"elastic: drift {drift['drift']:.3f}, positions {drift['positions']} vs "
        f"{drift['ref_positions']}, forwards {drift['forwards']} vs {drift['ref_forwards']}")
  assert drift["cache"] == "elastic" and 0.0 <= drift["drift"] <= 1.0
  assert drift["out"]["done"].all()
  assert (drift["out"]["positions_computed"] < drift["ref"]["positions_computed"]).all()


def test_refresh_from_the_last_layer_changes_no_token(params, prompts, drift):
  """gamma = 2 > any cosine: every cached step refreshes layer 1 of every position. With two
  layers that recomputes K/V from the inputs they were cached from, so the tokens are the
  default rule's; each cached step costs (capacity + limit) / 2 positions, rounded up. Rows 1
  and 2 alone, at their own prompt width: a row decodes the same in any batch too."""
  rows = [1, 2]
  out = run(params, prompts, sampler(cache_gamma=2.0), rows=rows, width=LENGTHS[rows].max())
  ref = {key: drift["out"][key][rows] for key in ("tokens", "num_tokens", "nfe_denoise",
                                                  "positions_computed")}
  for key in ("tokens", "num_tokens", "nfe_denoise"):
    np.testing.assert_array_equal(out[key], ref[key], err_msg=key)
  limit = LENGTHS[rows] + NEW
  cap = elastic_cache.capacity(sampler(), WIDTH + NEW)
  assert cap == 1 * 2 + 2 * WINDOW
  per_step = -(-(np.minimum(cap, limit) + limit) // 2)
  np.testing.assert_array_equal(out["positions_computed"],
                                limit + (out["nfe_denoise"] - 1) * per_step)
  assert (out["positions_computed"] > ref["positions_computed"]).all()


def test_rows_decode_the_same_in_any_batch(params, prompts, drift):
  """Ragged prompts: swapped rows and repeated rows (a row alone: the test above)."""
  config, full = sampler(), drift["out"]
  swapped = run(params, prompts, config, rows=[3, 1, 0, 2])
  again = run(params, prompts, config, rows=[1, 1, 3, 3])
  for key in ("tokens", "num_tokens", "nfe_denoise", "positions_computed"):
    np.testing.assert_array_equal(swapped[key], full[key][[3, 1, 0, 2]], err_msg=key)
    np.testing.assert_array_equal(again[key], full[key][[1, 1, 3, 3]], err_msg=key)


def test_drift_similarity_and_tracking_rules():
  """Cosine of the distributions over keys per head, averaged over heads and tracked slots
  (1 where nothing is tracked); tracking keeps the keys most attended by window slots."""
  # [1 row, 2 slots, 2 heads, 2 keys]
  a = jnp.asarray([[[[1.0, 0.0], [0.5, 0.5]], [[0.0, 1.0], [1.0, 0.0]]]])
  b = jnp.asarray([[[[1.0, 0.0], [0.5, 0.5]], [[1.0, 0.0], [1.0, 0.0]]]])
  sim = elastic_cache.drift_similarity(a, b, jnp.asarray([[True, True]]))
  np.testing.assert_allclose(sim, [(1.0 + 1.0 + 0.0 + 1.0) / 4], rtol=1e-6)
  np.testing.assert_allclose(elastic_cache.drift_similarity(a, b, jnp.asarray([[False, False]])),
                             [1.0])
  probs = jnp.asarray([[[[0.1, 0.6, 0.3]], [[0.9, 0.05, 0.05]]]])  # [1, 2 slots, 1 head, 3]
  config = dataclasses.replace(sampler(), cache_track=1)
  got = elastic_cache.track(config, probs, jnp.asarray([[True, False]]),
                            jnp.asarray([[True, False, True]]))
  np.testing.assert_array_equal(got, [[False, False, True]])  # key 1 is masked: excluded


@pytest.mark.parametrize("key, value, match", [
    ("cache_track", 0, "sample.cache_track must be an integer >= 1"),
    ("cache_gamma", -0.5, "sample.cache_gamma must be a number >= 0"),
    ("window", 0, "sample.window >= 1"),
    ("cache", "prefix", "sample.cache_gamma=0.5 only applies"),  # elastic's knobs, refused
])
def test_bad_config_names_the_key(key, value, match):
  cfg = elastic_cfg(**{key: value})
  if key == "cache":  # another mode with Elastic-Cache's threshold set
    cfg.sample.cache_gamma = 0.5
  with pytest.raises(ValueError, match=match):
    validate_run_sample_config(cfg)


def test_block_causal_refuses_elastic():
  cfg = tiny_config(V, 4)
  cfg.sample.update(cache="elastic", window=WINDOW)
  with pytest.raises(ValueError, match="sample.cache='elastic' is not a mode for a block-causal"):
    validate_run_sample_config(cfg)
