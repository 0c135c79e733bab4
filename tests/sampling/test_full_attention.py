"""Full-attention models decoded semi-autoregressively, and the cache ladder's first rungs.

A tiny sharpened random model with ``model.attention="bidirectional"`` (2 layers: with one
layer a prefix position's K/V would not depend on the masks after it, and the approximate
caches would be exact by accident). Decoding is sampled (T = 1, threshold rule), so rows take
different numbers of steps per block and reach block starts at different iterations, and
rows stop at a stop token in different places.
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sampling_common import sharpened_params, tiny_config

from bdiff import runs
from bdiff.models import make_model
from bdiff.sampling import drift as drift_lib
from bdiff.sampling import generate as gen
from bdiff.sampling import strategies
from bdiff.sampling.config import validate_run_sample_config

V = 23
WIDTH, NEW, BLOCK = 7, 10, 4
LENGTHS = np.array([7, 3, 5, 4], np.int32)
STOP = 4  # a token this random model emits mid-way in some rows
IDS = np.arange(40, 44, dtype=np.int32)


def full_cfg(shift=False, **sample):
  cfg = tiny_config(V, 16, attention="bidirectional")
  cfg.diffusion.token_shift = shift
  cfg.sample.update(max_new_tokens=NEW, block_size=BLOCK, strategy="threshold", threshold=0.7,
                    temperature=1.0)
  cfg.sample.update(**sample)
  return cfg


def sampler(shift=False, **sample):
  cfg = full_cfg(shift, **sample)
  validate_run_sample_config(cfg)
  config = gen.SamplerConfig.from_config(cfg, eos_id=STOP)
  assert config.full_attention and config.block_size == BLOCK
  return config


@pytest.fixture(scope="module")
def params():
  return sharpened_params(full_cfg().model)


@pytest.fixture(scope="module")
def prompts():
  return np.asarray(jax.random.randint(jax.random.key(1), (4, WIDTH), 0, V), np.int32)


def run(params, prompts, config, rows=None, width=WIDTH, trace=False):
  rows = np.arange(4) if rows is None else np.asarray(rows)
  out = gen.generate(params, prompts[rows, :width], jax.random.key(3), config, LENGTHS[rows],
                     IDS[rows], trace=trace)
  return jax.tree.map(np.asarray, out)


def plain_semi_ar(params, config, prompt, row_id):
  """LLaDA's semi-AR loop for one row, written plainly: a canvas of exactly prompt + budget
  (no padding), the whole canvas forwarded with full attention (no mask, no segments) every
  step, the strategy asked about the active block only."""
  model = make_model(config.model)
  p, n, blk, mask = len(prompt), len(prompt) + NEW, config.block_size, config.mask_id
  forward = jax.jit(lambda t: model.apply({"params": params}, t[None], jnp.arange(n)[None])[0])
  x = np.concatenate([prompt, np.full(NEW, mask)]).astype(np.int32)
  select = jax.jit(strategies.select, static_argnums=0)
  state, nfe, stop = strategies.init_state(config.strategy, 1, blk), 0, n
  for s in range(p, n, blk):
    e, step = min(s + blk, n), 0
    while ((x[s:e] == mask) & (np.arange(s, e) < stop)).any():
      z = np.asarray(forward(x))
      z = np.concatenate([z[:1], z[:-1]]) if config.token_shift else z
      window = np.zeros((1, blk, V), np.float32)
      window[0, :e - s] = z[s:e]
      masked = np.zeros((1, blk), bool)
      masked[0, :e - s] = (x[s:e] == mask) & (np.arange(s, e) < stop)
      key = jax.random.fold_in(jax.random.fold_in(jax.random.key(3), row_id), nfe)
      commit, values, state = select(config.strategy, jnp.asarray(window), jnp.asarray(masked),
                                     key[None], jnp.int32(step), state)
      commit = np.asarray(commit)[0, :e - s] & masked[0, :e - s]
      x[s:e] = np.where(commit, np.asarray(values)[0, :e - s], x[s:e])
      hits = np.flatnonzero(commit & (x[s:e] == STOP))
      stop = min(stop, s + hits[0]) if len(hits) else stop
      nfe, step = nfe + 1, step + 1
    if stop < e:
      break
  return x[p:min(stop + 1, n)], nfe


@pytest.mark.parametrize("shift", [False, True], ids=["llada", "dream_shifted"])
def test_none_is_plain_semi_ar_full_recompute(params, prompts, shift):
  """cache="none" (the default) reproduces the plain loop row by row, ragged prompts and all."""
  config = sampler(shift)
  assert config.cache_mode == "none"
  out = run(params, prompts, config)
  assert out["done"].all() and (out["nfe_commit"] == 0).all() and out["nfe_prefill"] == 0
  assert len(set(out["nfe_denoise"].tolist())) > 1  # rows follow their own schedules
  if not shift:
    assert (out["num_tokens"] < NEW).any()          # some row stopped at STOP
  for r in (1, 2):  # two prompt lengths (each compiles its own plain forward)
    want, nfe = plain_semi_ar(params, config, prompts[r, :LENGTHS[r]], IDS[r])
    got = out["tokens"][r, :out["num_tokens"][r]]
    np.testing.assert_array_equal(got, want, err_msg=f"row {r}")
    assert out["nfe_denoise"][r] == nfe
  # Every forward recomputes the row's whole canvas (prompt + budget).
  np.testing.assert_array_equal(out["positions_computed"],
                                out["nfe_denoise"] * (LENGTHS + NEW))


@pytest.mark.parametrize("mode, shift", [("prefix", False), ("dual", True)])
def test_refresh_every_step_equals_none(params, prompts, mode, shift):
  """Recomputing the cache at every step leaves nothing stale: the reference, step by step."""
  out = run(params, prompts, sampler(shift, cache=mode, cache_refresh=1), trace=True)
  ref = run(params, prompts, sampler(shift), trace=True)
  for key in ("tokens", "num_tokens", "nfe_denoise", "positions_computed", "trace"):
    np.testing.assert_array_equal(out[key], ref[key], err_msg=key)


@pytest.fixture(scope="module")
def drifts(params, prompts):
  return {mode: drift_lib.measure_drift(params, prompts, jax.random.key(3),
                                        sampler(cache=mode), LENGTHS, IDS)
          for mode in ("prefix", "dual")}


@pytest.mark.parametrize("mode", ["prefix", "dual"])
def test_approximate_cache_drift_is_reported_and_saves_work(drifts, mode):
  d = drifts[mode]
  print(f"{mode}: drift {d['drift']:.3f}, positions {d['positions']} vs {d['ref_positions']}, "
        f"forwards {d['forwards']} vs {d['ref_forwards']}")
  assert d["cache"] == mode
  assert 0.0 <= d["drift"] <= 1.0
  assert d["positions"] < d["ref_positions"]
  assert d["out"]["done"].all()


def test_dual_queries_fewer_positions_than_prefix(drifts):
  """Dual caches the suffix too, so its cached steps query the block only."""
  per = {m: d["positions"] / d["forwards"] for m, d in drifts.items()}
  assert per["dual"] < per["prefix"]


def test_token_drift_counts_differing_and_missing_slots():
  a = np.array([[1, 2, 3, gen.NO_TOKEN], [4, 5, gen.NO_TOKEN, gen.NO_TOKEN]])
  b = np.array([[1, 9, 3, 7], [4, 5, gen.NO_TOKEN, gen.NO_TOKEN]])
  assert drift_lib.token_drift(a, b) == pytest.approx(2 / 6)
  assert drift_lib.token_drift(a, a) == 0.0


@pytest.mark.parametrize("mode", ["none", "prefix", "dual"])
def test_rows_decode_the_same_in_any_batch(params, prompts, mode):
  """Swapped rows and companions (same shape) and, for ``dual`` (the mode with the most
  per-row key validity: stale prefix and suffix, fresh block), a row alone at its own prompt
  width (``none`` is checked alone, without padding, by the plain-loop test above)."""
  config = sampler(cache=mode)
  full = run(params, prompts, config)
  swapped = run(params, prompts, config, rows=[3, 1, 0, 2])
  again = run(params, prompts, config, rows=[1, 1, 3, 3])
  for key in ("tokens", "num_tokens", "nfe_denoise", "positions_computed"):
    np.testing.assert_array_equal(swapped[key], full[key][[3, 1, 0, 2]], err_msg=key)
    np.testing.assert_array_equal(again[key], full[key][[1, 1, 3, 3]], err_msg=key)
  if mode != "dual":
    return
  alone = run(params, prompts, config, rows=[1], width=LENGTHS[1])
  for key in ("tokens", "nfe_denoise", "positions_computed"):
    np.testing.assert_array_equal(alone[key][0], full[key][1], err_msg=key)


class ModTokenizer:
  """Characters as ids modulo the tiny vocabulary: enough to drive ``runs.Sampler``."""
  eos_id, bos_id = STOP, 1

  def encode(self, text):
    return [ord(c) % V for c in text]

  def decode(self, ids):
    return " ".join(map(str, ids))


def test_sample_records_name_their_cache(params):
  """``bdiff sample`` records say which cache made them (an approximate one is never silent)
  and how many positions it recomputed."""
  cfg = full_cfg(cache="dual", batch_size=4, prompt_prefix="none")
  recs = runs.Sampler(cfg, params, ModTokenizer(), use_mesh=False).sample(["abc", "hello!"])
  for rec, text in zip(recs, ["abc", "hello!"]):
    assert rec["cache"] == "dual" and rec["nfe_commit"] == 0
    # Each forward recomputes at most the row's canvas, and the block-start ones all of it.
    assert len(text) + NEW <= rec["positions_computed"] < rec["num_forwards"] * (len(text) + NEW)


def test_block_size_zero_is_one_block_for_the_generation():
  cfg = full_cfg(block_size=0)
  validate_run_sample_config(cfg)
  assert gen.SamplerConfig.from_config(cfg).block_size == NEW
  cfg.sample.block_size = 3  # any length, not only the trained block (16) or a divisor
  validate_run_sample_config(cfg)
  assert gen.SamplerConfig.from_config(cfg).block_size == 3


@pytest.mark.parametrize("override, key", [
    (dict(cache="exact"), "sample.cache"),
    (dict(cache="lru"), "sample.cache"),
    (dict(cache="none", cache_refresh=2), "sample.cache_refresh"),
    (dict(cache="prefix", use_cache=False), "sample.use_cache"),
    (dict(cache_refresh=-1), "sample.cache_refresh"),
    (dict(commit="fused"), "sample.commit"),
    (dict(first_token_from_commit=True), "sample.first_token_from_commit"),
])
def test_full_attention_bad_settings_name_the_key(override, key):
  with pytest.raises(ValueError, match=key):
    validate_run_sample_config(full_cfg(**override))


@pytest.mark.parametrize("mode", ["prefix", "dual"])
def test_block_causal_refuses_the_approximate_caches(mode):
  cfg = tiny_config(V, 4)
  cfg.sample.cache = mode
  with pytest.raises(ValueError, match="sample.cache='%s' is not a mode for a block-causal" % mode):
    validate_run_sample_config(cfg)


def test_block_causal_cache_key_picks_the_loop_modes():
  """On a block-causal model ``auto`` is the exact cache and ``sample.cache="none"`` the
  no-cache reference, the same sampler as ``use_cache=False``
  (``test_generate.py::test_cache_equals_no_cache_reference`` decodes ``cache="none"`` against
  the exact cache token for token and step for step)."""
  cfg = tiny_config(V, 4)
  configs = {}
  for name, sample in {"auto": {}, "none": dict(cache="none"),
                       "use_cache": dict(use_cache=False)}.items():
    cfg.sample.update(**{"cache": "auto", "use_cache": True, **sample})
    validate_run_sample_config(cfg)
    configs[name] = gen.SamplerConfig.from_config(cfg)
  assert [c.cache_mode for c in configs.values()] == ["exact", "none", "none"]
  assert not any(c.full_attention for c in configs.values())
  as_reference = dataclasses.replace(configs["auto"], use_cache=False)
  assert as_reference.cache_mode == "none"
  assert dataclasses.replace(configs["none"], cache="auto", use_cache=False) == as_reference
