"""dKV-Cache (``dkv``, ``dkv_greedy``) and Window-Diffusion (``window_block``, ``window``) in
the full-attention loop.

Same tiny sharpened model, prompts and sampled threshold decoding as test_full_attention
(2 layers, so K/V past the first layer depend on the rest of the canvas and the caches are
approximate). Bounds fixed from the methods' definitions:

* refreshing every step (``cache_refresh=1``) runs only full forwards: ``none`` step by step;
* with one layer a position's K/V depend on its own token and position only, so K/V cached
  after the token was decoded equal fresh ones: ``dkv`` is then exact, and so is
  ``window_block`` when its buffer covers every mask (no far field);
* otherwise both recompute strictly fewer positions than ``none``.

``window`` and ``dkv_greedy`` (query_cache.py) follow the same bounds; with one layer
``dkv_greedy`` is exact whatever its window (every token's K/V are recomputed the step after
it is decoded), which also checks that it queries exactly the positions the step decodes.
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sampling_common import sharpened_params, tiny_config
from test_full_attention import (  # noqa: F401 (params, prompts: the shared fixtures)
    BLOCK, IDS, LENGTHS, NEW, STOP, full_cfg, params, prompts, run, sampler)

from bdiff.sampling import approx_cache, query_cache
from bdiff.sampling import drift as drift_lib
from bdiff.sampling import generate as gen
from bdiff.sampling import loop as loop_lib
from bdiff.sampling.config import validate_run_sample_config

MODES = ("dkv", "window_block")
QUERY_MODES = ("window", "dkv_greedy")  # query_cache.py
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
  assert_rows_decode_alike(params, prompts, config, full)
  alone = run(params, prompts, config, rows=[1], width=LENGTHS[1])
  for key in ("tokens", "num_tokens", "nfe_denoise", "positions_computed"):
    np.testing.assert_array_equal(alone[key][0], full[key][1], err_msg=key)


def assert_rows_decode_alike(params, prompts, config, full):
  """Swapped and repeated rows decode as they did in ``full`` (the outputs of all rows)."""
  for rows in ([3, 1, 0, 2], [1, 1, 3, 3]):
    out = run(params, prompts, config, rows=rows)
    for key in ("tokens", "num_tokens", "nfe_denoise", "positions_computed"):
      np.testing.assert_array_equal(out[key], full[key][rows], err_msg=key)


@pytest.mark.parametrize("mode", MODES)
def test_config_accepts_the_modes_with_refresh(mode):
  cfg = full_cfg(cache=mode, cache_refresh=4)
  validate_run_sample_config(cfg)
  assert sampler(cache=mode).cache_mode == mode


@pytest.mark.parametrize("mode", MODES + QUERY_MODES)
def test_block_causal_refuses_the_modes(mode):
  cfg = tiny_config(23, 4)
  cfg.sample.cache = mode
  with pytest.raises(ValueError, match=f"sample.cache='{mode}' is not a mode for a block-causal"):
    validate_run_sample_config(cfg)



# The query-set caches under LLaDA's random remasking (which dkv_greedy needs), each with its
# own knobs; the no-cache reference resets them, so both share one compiled reference.
RANDOM = dict(strategy="static", confidence="random", steps=4)  # 1 position a step
KNOBS = {"window": dict(window_tokens=4, active_tokens=2), "dkv_greedy": dict(dkv_window_size=1)}


def query_sampler(mode, **sample):
  return sampler(cache=mode, **{**RANDOM, **KNOBS[mode], **sample})


def test_modes_share_one_reference():
  """The no-cache reference drops each mode's knobs (it reads none): one compiled loop."""
  window, greedy = (drift_lib.reference_config(query_sampler(m)) for m in QUERY_MODES)
  assert window == greedy and window.cache == "none" and window.window_tokens == 64


@pytest.fixture(scope="module")
def query_drifts(params, prompts):
  return {mode: drift_lib.measure_drift(params, prompts, jax.random.key(3), query_sampler(mode),
                                        LENGTHS, IDS) for mode in QUERY_MODES}


@pytest.mark.parametrize("mode", QUERY_MODES)
def test_query_cache_drift_is_reported_and_work_saved(query_drifts, mode):
  d = query_drifts[mode]
  print(f"{mode}: drift {d['drift']:.3f}, positions {d['positions']} vs {d['ref_positions']}, "
        f"forwards {d['forwards']} vs {d['ref_forwards']}")
  assert d["cache"] == mode and 0.0 <= d["drift"] <= 1.0
  assert d["out"]["done"].all()
  assert (d["out"]["positions_computed"] < d["ref"]["positions_computed"]).all()


@pytest.mark.parametrize("mode", QUERY_MODES)
def test_query_cache_one_layer_is_exact(prompts, mode):
  """One layer, token-shifted: a position's K/V depend on its token and position only.
  ``window`` with every mask active and in the window, and ``dkv_greedy`` as configured, then
  attend exact keys, so they decode what ``cache="none"`` does: a token whose K/V were not
  recomputed after it was decoded, a K/V written to the wrong slot, a missing predictor, or
  (greedy) a decoded position that was not queried would change the tokens. (Refreshing every
  step, ``cache_refresh=1``, runs only full forwards.)"""
  # window: no far field and every mask active.
  knobs = dict(window_tokens=NEW, active_tokens=NEW) if mode == "window" else KNOBS[mode]
  cfg = full_cfg(True, cache=mode, **RANDOM, **knobs)
  cfg.model.n_layers = 1
  validate_run_sample_config(cfg)
  config = gen.SamplerConfig.from_config(cfg, eos_id=STOP)
  d = drift_lib.measure_drift(sharpened_params(cfg.model), prompts, jax.random.key(3), config,
                              LENGTHS, IDS)
  np.testing.assert_array_equal(d["out"]["tokens"], d["ref"]["tokens"])
  np.testing.assert_array_equal(d["out"]["nfe_denoise"], d["ref"]["nfe_denoise"])
  assert d["drift"] == 0.0 and d["positions"] < d["ref_positions"]


@pytest.mark.parametrize("mode", QUERY_MODES)
def test_query_cache_rows_decode_the_same_in_any_batch(params, prompts, query_drifts, mode):
  """Ragged prompts, rows refreshing at different iterations: swapped and repeated rows (the
  same compiled shape as the drift run, whose outputs are the reference)."""
  assert_rows_decode_alike(params, prompts, query_sampler(mode), query_drifts[mode]["out"])


def test_greedy_neighbours_alternate_and_skip_chosen():
  """dKV-Cache's find_window_tokens: per center in order, the nearest eligible positions not
  yet chosen at distances 1, 1, 2, 2, ... left first; a later center skips what an earlier
  one took, and the search stops at the canvas edges."""
  eligible = jnp.array([1, 1, 0, 1, 1, 1, 0, 1, 1, 1], bool)
  chosen = jnp.zeros(10, bool).at[jnp.array([4, 8])].set(True)  # the centers themselves
  grown = query_cache._neighbours(chosen, eligible, jnp.array([4, 8, -1]), 3)
  # center 4: 3 (left), 5 (right), 2 and 6 not eligible, then 1 -> {3, 5, 1}; center 8: 7,
  # 9, 6 no, 10 outside, 5 taken, 4 taken, 3 taken, 2 no, 1 taken, 0 -> {7, 9, 0}; the -1
  # slot adds nothing.
  np.testing.assert_array_equal(np.flatnonzero(np.asarray(grown)), [0, 1, 3, 4, 5, 7, 8, 9])


def test_window_plan_slides_and_requeries_the_phase_tokens():
  """Window-Diffusion's plan on a hand-made row (prompt 2, limit 12, window_tokens=4,
  active_tokens=2), step by step inside one phase (build_window_plan / update_window_plan):
  the keys are fixed at the phase's second step, the active set slides over the masks, the
  phase-start step's token is queried once, later decoded tokens until the phase ends."""
  config = query_sampler("window")
  m = config.mask_id
  rows = loop_lib.make_rows(config, np.array([2]), np.array([0]), jax.random.key(0))
  none = jnp.zeros((1, 12), bool)

  def canvas(*done):  # prompt [1, 2], then token 3 where decoded, else [MASK]
    return jnp.array([[1, 2] + [3 if i in done else m for i in range(2, 12)]])

  def bits(*pos):
    return none.at[0, jnp.array(pos, jnp.int32)].set(True)

  def plan(step, tokens, keys, phase, masked):
    cache = query_cache.QueryCache(None, None, keys, phase, masked)
    state = loop_lib.LoopState(
        tokens=tokens, blk_start=jnp.array([2]), step_in_blk=jnp.array([step]),
        needs_commit=None, done=jnp.array([False]), stop_pos=None, nfe_denoise=None,
        nfe_commit=None, positions=None, prev_logits=None, cache=cache, strat=None, it=None,
        trace=None)
    return [np.flatnonzero(np.asarray(x[0])).tolist()
            for x in query_cache._window_plan(config, state, rows)]

  gen_masks = bits(*range(2, 12))
  # Step 1: the phase-start step decoded 3.
  q, k, phase, active = plan(1, canvas(3), none, none, gen_masks)
  assert (q, k, phase, active) == ([2, 3, 4], [0, 1, 2, 3, 4, 5, 6], [], [2, 4])
  # Step 2: step 1 decoded 4; 3 is no longer queried, the active set slid to 5.
  q, k, phase, active = plan(2, canvas(3, 4), bits(*k), none, bits(2, *range(4, 12)))
  assert (q, k, phase, active) == ([2, 4, 5], [0, 1, 2, 3, 4, 5, 6], [4], [2, 5])
  # Step 3: step 2 decoded 2; 4 stays queried, the active set reaches 6.
  q, k, phase, active = plan(3, canvas(2, 3, 4), bits(*k), bits(4), bits(*range(5, 12)) | bits(2))
  assert (q, k, phase, active) == ([2, 4, 5, 6], [0, 1, 2, 3, 4, 5, 6], [2, 4], [5, 6])



def test_window_decides_among_the_active_masks_only():
  """At a cached step ``window`` computed logits for the active masks only, so the step
  decides among them: with one active mask (position 2) and another open one in the block
  (5), eight rows with different random-order keys all decode 2; a refreshing step leaves
  the whole block open."""
  config = query_sampler("window", active_tokens=1)
  m, n = config.mask_id, 8
  tokens = jnp.tile(jnp.array([[1, 2, m, 3, 3, m] + [m] * 6]), (n, 1))
  rows = loop_lib.make_rows(config, np.full(n, 2), np.arange(n), jax.random.key(0))
  masked = jnp.asarray(np.asarray(tokens) == m)
  cache = query_cache.QueryCache(None, None, masked, masked, masked)
  state = loop_lib.LoopState(
      tokens=tokens, blk_start=jnp.full(n, 2), step_in_blk=jnp.full(n, 2),
      needs_commit=jnp.zeros(n, bool), done=jnp.zeros(n, bool), stop_pos=jnp.full(n, 12),
      nfe_denoise=jnp.full(n, 2), nfe_commit=None, positions=None, prev_logits=None,
      cache=cache, strat={"n0": jnp.full(n, 4)}, it=None, trace=None)
  allowed = jax.jit(query_cache.allowed, static_argnums=0)(config, state, rows)
  np.testing.assert_array_equal(allowed, np.tile([[True, False, False, False]], (n, 1)))
  logits = jnp.zeros((n, BLOCK, config.model.vocab_size))
  out = jax.jit(loop_lib.denoise, static_argnums=0)(config, state, rows, logits, allowed)
  np.testing.assert_array_equal(np.asarray(out.tokens[:, 5]), m)  # 5 stays masked
  assert (np.asarray(out.tokens[:, 2]) != m).all()
  start = query_cache.allowed(config, state._replace(step_in_blk=jnp.zeros(n, jnp.int32)), rows)
  assert np.asarray(start).all()


@pytest.mark.parametrize("sample, key", [
    (dict(cache="dkv_greedy"), "sample.strategy"),  # the fixture's threshold rule
    (dict(cache="dkv_greedy", strategy="static", confidence="prob"), "sample.confidence"),
    (dict(cache="dkv_greedy", **{**RANDOM, "suppress_ids": (3,)}), "sample.suppress_ids"),
    (dict(cache="window", window_tokens=0), "sample.window_tokens"),
    (dict(cache="window", active_tokens=-1), "sample.active_tokens"),
    (dict(cache="dkv_greedy", **{**RANDOM, "dkv_window_size": -1}), "sample.dkv_window_size"),
    # A knob another mode reads is refused, not ignored.
    (dict(cache="prefix", window_tokens=8), "sample.window_tokens=8 only applies"),
    (dict(cache="window", dkv_window_size=2), "sample.dkv_window_size=2 only applies"),
    (dict(cache="dkv_greedy", **RANDOM, active_tokens=4), "sample.active_tokens=4 only applies"),
])
def test_query_cache_bad_settings_name_the_key(sample, key):
  cfg = full_cfg(**sample)
  with pytest.raises(ValueError, match=key):
    validate_run_sample_config(cfg)
