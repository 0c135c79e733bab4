"""DCD (arXiv 2601.02076, shuyingte/DCD) in the full-attention loop: its sliding window over
the masks and its cache refreshed by decoded count (``dcd_prefix`` / ``dcd_dual``).

The window rule is checked step by step on hand-built logits, the refresh and span rules on
hand-built counters, and the loop on a tiny sharpened random full-attention model (2 layers,
ragged prompts, T = 1, one block for the whole generation as DCD decodes).
"""
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sampling_common import (full_attention_params, generate_rows, random_prompts,
                             sharpened_params, tiny_config)

from bdiff.sampling import dcd_cache
from bdiff.sampling import generate as gen
from bdiff.sampling import strategies
from bdiff.sampling.config import validate_run_sample_config
from bdiff.sampling.types import StrategyConfig

V = 23
WIDTH, NEW = 7, 12
LENGTHS = np.array([7, 3, 5, 4], np.int32)
IDS = np.arange(40, 44, dtype=np.int32)
DCD = dict(strategy="dcd", window=3, max_window=6, threshold=0.7)


def test_window_rule_on_hand_built_logits():
  """Candidates are the first W0 = 2 masks within max_window = 3 positions of the first mask;
  commit those with c >= 0.8, else the most confident one. A confident position waits for the
  window (step 1: position 3), and the span cap defers one inside the first W0 masks (step 5:
  position 5 is 3 positions past the hard position 2)."""
  conf = np.array([0.5, 0.95, 0.3, 0.99, 0.99, 0.99, 0.9, 0.9])
  probs = np.stack([conf, *(3 * [(1 - conf) / 3])], axis=-1)  # token 0 proposed everywhere
  logits = jnp.asarray(np.log(probs), jnp.float32)[None]
  cfg = StrategyConfig(name="dcd", window=2, max_window=3, threshold=0.8)
  masked = np.ones((1, 8), bool)
  want = [{1}, {0}, {3}, {4}, {2}, {5, 6}, {7}]
  for step, expected in enumerate(want):
    commit, tokens, _ = strategies.select(cfg, logits, jnp.asarray(masked),
                                          jax.random.key(0)[None], step, {})
    got = set(np.flatnonzero(np.asarray(commit)[0]).tolist())
    assert got == expected, f"step {step}: {got} != {expected}"
    assert (np.asarray(tokens)[0, list(got)] == 0).all()
    masked[0, list(got)] = False
  assert not masked.any()


def _state(since, open_prev, wl_prev, step=(1, 1, 1)):
  counters = {"since": jnp.asarray(since, jnp.int32), "open": jnp.asarray(open_prev, jnp.int32),
              "wl": jnp.asarray(wl_prev, jnp.int32)}
  return types.SimpleNamespace(cache=(None, None, counters),
                               step_in_blk=jnp.asarray(step, jnp.int32))


def test_refresh_and_span_rules():
  """Refresh at a block's first step and once a row has decoded >= cache_refresh tokens since
  its last refresh (the previous step's commits counted); the cached span starts ``w`` left of
  the previous window and (dual) stops ``w`` right of the window."""
  config = types.SimpleNamespace(cache_refresh=4, cache_delay=2, cache_mode="dcd_dual",
                                 token_shift=False, max_new_tokens=40,
                                 strategy=StrategyConfig(name="dcd", window=3, max_window=6))
  # rows: 2 decoded before + 1 now = 3 < 4; 3 + 2 = 5 >= 4; a new block (step 0) refreshes.
  state = _state(since=[2, 3, 9], open_prev=[9, 9, 9], wl_prev=[10, 11, 7], step=[1, 1, 0])
  refresh, since = dcd_cache.refreshing(config, state, jnp.asarray([8, 7, 9]))
  np.testing.assert_array_equal(refresh, [False, True, True])
  np.testing.assert_array_equal(since, [3, 5, 0])
  rows = types.SimpleNamespace(lengths=jnp.asarray([7, 7, 7]), limit=jnp.asarray([47, 47, 47]))
  wl, wr = jnp.asarray([12, 13, 12]), jnp.asarray([15, 17, 24])
  start, stop = dcd_cache._span(config, state, rows, wl, wr)
  # [max(wl_prev - 2, P), wr + 2) within the query width 2 (max_window + w) = 16. Row 2's
  # window is wider than a step can make it (a safety net): its span [7, 26) is cut to the
  # 16 positions ending at the window's end.
  np.testing.assert_array_equal(start, [8, 9, 8])
  np.testing.assert_array_equal(stop, [17, 19, 24])
  prefix = dataclass_like(config, cache_mode="dcd_prefix", cache_delay=0)
  start, stop = dcd_cache._span(prefix, state, rows, wl, wr)
  np.testing.assert_array_equal(start, wl)
  np.testing.assert_array_equal(stop, rows.limit)


def dataclass_like(ns, **kw):
  return types.SimpleNamespace(**{**vars(ns), **kw})


def sampler(**sample):
  cfg = tiny_config(V, 16, attention="bidirectional")
  cfg.sample.update(max_new_tokens=NEW, block_size=0, temperature=1.0, **DCD)
  cfg.sample.update(**sample)
  validate_run_sample_config(cfg)
  return gen.SamplerConfig.from_config(cfg, eos_id=4)


@pytest.fixture(scope="module")
def params():
  return full_attention_params(V)


@pytest.fixture(scope="module")
def prompts():
  return random_prompts(V, WIDTH)


def run(params, prompts, config, rows=(0, 1, 2, 3)):
  return generate_rows(params, prompts, config, LENGTHS, IDS, rows)


def test_one_layer_delayed_cache_is_exact(prompts):
  """With one layer a position's K/V depend on its own token only, so a cached K/V is stale
  exactly when its token was committed after it was computed. DCD's delay recomputes the
  positions decoded at the previous step once more, and nothing else changes between
  refreshes: ``dcd_dual`` with delay 1 and no refresh after the first step decodes as
  ``none`` (shifted model: the predicting positions are recomputed too). Without the delay
  the just-decoded tokens keep their [MASK]-input K/V, and the decode drifts."""
  model = dict(attention="bidirectional", n_layers=1)
  one = sharpened_params(tiny_config(V, 16, **model).model)

  def decode(**sample):
    cfg = tiny_config(V, 16, **model)
    cfg.diffusion.token_shift = True
    cfg.sample.update(max_new_tokens=NEW, block_size=0, temperature=1.0, **DCD)
    cfg.sample.update(**sample)
    validate_run_sample_config(cfg)
    return run(one, prompts, gen.SamplerConfig.from_config(cfg, eos_id=4))

  ref = decode()
  out = decode(cache="dcd_dual", cache_refresh=100, cache_delay=1)
  np.testing.assert_array_equal(out["tokens"], ref["tokens"])
  np.testing.assert_array_equal(out["nfe_denoise"], ref["nfe_denoise"])
  assert (out["positions_computed"] < ref["positions_computed"]).all()
  stale = decode(cache="dcd_dual", cache_refresh=100, cache_delay=0)
  assert (stale["tokens"] != ref["tokens"]).any()


def test_dual_delay_batch_invariant(params, prompts):
  """dcd_dual with delay 2, refreshed every 4 decoded tokens: cached forwards run (fewer
  positions than a full recompute), and a row decodes the same alone as in the batch."""
  config = sampler(cache="dcd_dual", cache_refresh=4, cache_delay=2)
  out = run(params, prompts, config)
  assert out["done"].all()
  assert (out["positions_computed"] < out["nfe_denoise"] * (LENGTHS + NEW)).all()
  for r in (1, 2):
    alone = run(params, prompts, config, rows=(r,))
    for key in ("tokens", "nfe_denoise", "positions_computed"):
      np.testing.assert_array_equal(alone[key][0], out[key][r], err_msg=f"{key} row {r}")


@pytest.mark.parametrize("override, match", [
    (dict(strategy="threshold"), "sample.cache='dcd_dual'.*sample.strategy='dcd'"),
    (dict(cache_refresh=0), "sample.cache='dcd_dual' refreshes after sample.cache_refresh"),
    (dict(cache="prefix"), "sample.cache_delay=2 only applies"),
    (dict(cache_delay=-1), "sample.cache_delay must be an integer >= 0"),
])
def test_config_checks(override, match):
  with pytest.raises(ValueError, match=match):
    sampler(**{**dict(cache="dcd_dual", cache_refresh=4, cache_delay=2), **override})
