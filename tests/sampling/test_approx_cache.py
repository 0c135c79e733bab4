"""dKV-Cache (``dkv``) and the Window-Diffusion partition (``window_block``) in the
full-attention loop.

Same tiny sharpened model, prompts and sampled threshold decoding as test_full_attention
(2 layers, so K/V past the first layer depend on the rest of the canvas and the caches are
approximate). Bounds fixed from the methods' definitions:

* refreshing every step (``cache_refresh=1``) runs only full forwards: ``none`` step by step;
* with one layer a position's K/V depend on its own token and position only, so K/V cached
  after the token was decoded equal fresh ones: ``dkv`` is then exact, and so is
  ``window_block`` when its buffer covers every mask (no far field);
* otherwise both recompute strictly fewer positions than ``none``.
"""
import dataclasses

import jax
import numpy as np
import pytest
from sampling_common import sharpened_params, tiny_config
from test_full_attention import (  # noqa: F401 (params, prompts: the shared fixtures)
    BLOCK, IDS, LENGTHS, NEW, STOP, full_cfg, params, prompts, run, sampler)

from bdiff.sampling import approx_cache
from bdiff.sampling import drift as drift_lib
from bdiff.sampling import generate as gen
from bdiff.sampling.config import validate_run_sample_config

MODES = ("dkv", "window_block")
SHIFTS = {"dkv": False, "window_block": True}  # each mode on one of the two model kinds


@pytest.mark.parametrize("mode, shift", [("dkv", False), ("window_block", True)])
def test_refresh_every_step_equals_none(params, prompts, mode, shift):
  out = run(params, prompts, sampler(shift, cache=mode, cache_refresh=1))
  ref = run(params, prompts, sampler(shift, cache="none"))  # compiled once with drifts' own
  for key in ("tokens", "num_tokens", "nfe_denoise", "positions_computed"):
    np.testing.assert_array_equal(out[key], ref[key], err_msg=key)


@pytest.mark.parametrize("mode", MODES)
def test_one_layer_cache_is_exact(prompts, mode, shift=True):  # shifted: one shared reference
  """One layer: cached K/V of decoded tokens are what a fresh forward gives, so the cached
  steps see the exact keys (a K/V cached while its token was still [MASK], or at the wrong
  slot, would change the tokens); ``window_block``'s buffer (4 blocks) covers all NEW masks."""
  assert approx_cache.WINDOW_BLOCKS * BLOCK >= NEW
  cfg = full_cfg(shift, cache=mode)
  cfg.model.n_layers = 1
  validate_run_sample_config(cfg)
  config = gen.SamplerConfig.from_config(cfg, eos_id=STOP)
  one = sharpened_params(cfg.model)
  d = drift_lib.measure_drift(one, prompts, jax.random.key(3), config, LENGTHS, IDS)
  np.testing.assert_array_equal(d["out"]["tokens"], d["ref"]["tokens"])
  np.testing.assert_array_equal(d["out"]["nfe_denoise"], d["ref"]["nfe_denoise"])
  assert d["drift"] == 0.0 and d["positions"] < d["ref_positions"]


@pytest.fixture(scope="module")
def drifts(params, prompts):
  return {mode: drift_lib.measure_drift(params, prompts, jax.random.key(3),
                                        sampler(shift, cache=mode), LENGTHS, IDS)
          for mode, shift in SHIFTS.items()}


@pytest.mark.parametrize("mode", MODES)
def test_drift_is_reported_and_work_saved(drifts, mode):
  d, shift = drifts[mode], SHIFTS[mode]
  print(f"{mode} shift={shift}: drift {d['drift']:.3f}, positions {d['positions']} vs "
        f"{d['ref_positions']}, forwards {d['forwards']} vs {d['ref_forwards']}")
  assert d["cache"] == mode and 0.0 <= d["drift"] <= 1.0
  assert d["out"]["done"].all()
  assert (d["out"]["positions_computed"] < d["ref"]["positions_computed"]).any()
  assert d["positions"] < d["ref_positions"]


def test_dkv_full_forwards_follow_its_schedule(params, prompts):
  """dKV's schedule: steps 0 and 1 of a block are full forwards, then every k-th step; the
  others query [block start, row limit). One token per step (fixed_k, k=1), no stop token,
  cache_refresh=2: blocks of 4, 4, 2 positions take steps 0-3, 0-3, 0-1, of which step 3 of
  the first two is cached, querying NEW and NEW - BLOCK positions."""
  config = dataclasses.replace(sampler(cache="dkv", cache_refresh=2, strategy="fixed_k", k=1),
                               stop_ids=())
  out = run(params, prompts, config)
  assert (out["nfe_denoise"] == NEW).all()
  np.testing.assert_array_equal(out["positions_computed"],
                                (NEW - 2) * (LENGTHS + NEW) + NEW + (NEW - BLOCK))


@pytest.mark.parametrize("mode", MODES)
def test_rows_decode_the_same_in_any_batch(params, prompts, mode):
  """Ragged prompts: swapped rows, repeated rows, and a row alone at its own prompt width."""
  config = sampler(cache=mode)
  full = run(params, prompts, config)
  swapped = run(params, prompts, config, rows=[3, 1, 0, 2])
  again = run(params, prompts, config, rows=[1, 1, 3, 3])
  alone = run(params, prompts, config, rows=[1], width=LENGTHS[1])
  for key in ("tokens", "num_tokens", "nfe_denoise", "positions_computed"):
    np.testing.assert_array_equal(swapped[key], full[key][[3, 1, 0, 2]], err_msg=key)
    np.testing.assert_array_equal(again[key], full[key][[1, 1, 3, 3]], err_msg=key)
    np.testing.assert_array_equal(alone[key][0], full[key][1], err_msg=key)


@pytest.mark.parametrize("mode", MODES)
def test_config_accepts_the_modes_with_refresh(mode):
  cfg = full_cfg(cache=mode, cache_refresh=4)
  validate_run_sample_config(cfg)
  assert sampler(cache=mode).cache_mode == mode


@pytest.mark.parametrize("mode", MODES)
def test_block_causal_refuses_the_modes(mode):
  cfg = tiny_config(23, 4)
  cfg.sample.cache = mode
  with pytest.raises(ValueError, match=f"sample.cache='{mode}' is not a mode for a block-causal"):
    validate_run_sample_config(cfg)
