"""Approximate caches whose cached steps query a data-dependent set of positions.

Two rungs of the full-attention cache ladder (beside ``approx_cache``'s ``dkv`` and
``window_block``) recompute, between full forwards, only a set of positions chosen from the
canvas each step; every other key comes from the K/V cache, and the queried positions' fresh
K/V overwrite their cache rows. Both run inside ``full_attention``'s semi-autoregressive loop
(blocks of ``sample.block_size``; ``block_size=0`` is one block, the references' setting).

* ``window``: Window-Diffusion (Zhou et al., "Window-Diffusion", arXiv 2601.20332;
  github.com/vhicrgit/Window-Diffusion ``llada/model/modeling_llada.py``: ``generate``,
  ``build_window_plan``, ``update_window_plan``, ``block_forward_prune``). Undecoded tokens
  are *active* (queried), *buffer* (K/V cached, refreshed per phase) or *far field* (neither
  queried nor attended). Phases of ``k = sample.cache_refresh`` steps (``refresh_cycle``;
  0 = one phase per block) start with a full forward that caches every K/V and decides the
  step over the whole block. The phase's plan is built from the canvas after that decision:
  keys = every decoded token (prompt included) and the first ``sample.window_tokens`` masks in
  canvas order; queries = the first ``sample.active_tokens`` masks and the tokens the
  phase-start step decoded. Each other step forwards the queries only (their fresh K/V
  overwrite the cache, and are attended where they belong to the keys), decides among the
  active masks (the loop's strategy, its candidates restricted to them), and recomputes the
  queries: the first ``active_tokens`` masks (the active set *slides* as tokens are decoded)
  and the tokens decoded by this phase's cached steps. As in ``update_window_plan``, the
  phase-start step's tokens are queried at the phase's second step only.
* ``dkv_greedy``: dKV-Cache *Greedy* (Ma et al., "dKV-Cache: The Cache for Diffusion Language
  Models", arXiv 2505.15781; github.com/horseee/dKV-Cache
  ``generation_utils/llada_dkv_cache_greedy.py``), for LLaDA's random remasking only
  (``sample.strategy="static"``, ``sample.confidence="random"``): the positions a step decodes
  do not depend on the logits, so they are known before its forward. Steps ``i = 0`` and
  ``i mod k = 0`` (``k = sample.cache_refresh``, the reference's ``cache_reloading_step``;
  0 = block starts only) run the full forward; the others query the positions this step
  decodes, the tokens the previous step decoded, and for each position to decode (in decoding
  order) its ``sample.dkv_window_size`` nearest still-masked neighbours not yet chosen, looked
  for alternately left and right (``find_window_tokens``); every other key is its cached K/V.
  Deviation: the reference draws one random permutation per block and decodes it ``k_i``
  positions at a time; here step ``i`` ranks the block's masks by fresh per-row uniforms drawn
  with step ``i``'s key, exactly as the ``static`` rule with ``confidence="random"`` does. Both
  decode the block in a uniformly random order; this one makes the cached run decode the same
  positions as ``cache="none"``, so its drift measures the cache alone.

Token-shifted models (Dream): the logits at ``p - 1`` predict ``p``, so the position before
every mask to be decided is queried too.

Fixed shapes: the queried set is compacted into ``Q`` slots (queried positions first, in canvas
order), keys stay the whole canvas ``[L]`` with a per-row validity bit, so the saving is on the
query side. ``Q`` bounds the set by construction: ``window``'s decoded tokens in a phase lie in
the block, so ``Q = min(active_tokens x (1 + shift) + B, G + shift)``; ``dkv_greedy`` decodes at
most ``k_max = ceil(B / steps)`` positions a step, so ``Q = min(k_max x (2 + window + shift),
G + shift)`` (a step past the schedule, which may decode more, runs the full forward).
``positions_computed`` counts ``Q`` per cached step. Rows refresh at different iterations; as
in ``approx_cache``, an iteration runs the full forward for the rows that refresh and the
cached forward for the others, and every write is selected per row, so a row decodes the same
alone or in any batch. Drift from ``cache="none"`` is measured by ``bdiff.sampling.drift``.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from bdiff import masks as masks_lib
from bdiff.sampling import approx_cache
from bdiff.sampling import cache as cache_lib
from bdiff.sampling import config as config_lib
from bdiff.sampling import loop as loop_lib
from bdiff.sampling import selection as sel
from bdiff.sampling import strategies as strategies_lib
from bdiff.sampling import strategies_scheduled as scheduled
from bdiff.sampling.loop import LoopState, Rows, SamplerConfig

MODES = config_lib.QUERY_SET_CACHES


class QueryCache(NamedTuple):
  """The carry: K/V of every canvas position and the per-row bits the rules need."""
  k: jax.Array       # [n_layers, b, L, kv_heads, head_dim]
  v: jax.Array
  keys: jax.Array    # [b, L] window: the phase's key set (decoded tokens and the buffer)
  phase: jax.Array   # [b, L] window: tokens decoded by this phase's cached steps
  masked: jax.Array  # [b, L] positions that were [MASK] at the row's previous forward


def init_cache(config: SamplerConfig, batch: int, length: int) -> QueryCache:
  k, v = cache_lib.init_cache(config.model, batch, length)
  bits = jnp.zeros((batch, length), bool)
  return QueryCache(k, v, bits, bits, bits)


def _steps(config: SamplerConfig) -> int:
  """Denoising steps per block of the ``static`` schedule."""
  return scheduled.steps_per_block(config.strategy, config.block_size)


def _k_max(config: SamplerConfig) -> int:
  """Most positions a ``static`` step decodes within the schedule: ``ceil(B / steps)``."""
  return -(-config.block_size // _steps(config))


def capacity(config: SamplerConfig) -> int:
  """``Q``: query slots of a cached forward (the module docstring's bound)."""
  shift = int(config.token_shift)
  if config.cache_mode == "window":
    width = config.active_tokens * (1 + shift) + config.block_size
  else:
    width = _k_max(config) * (2 + config.dkv_window_size + shift)
  return min(width, config.max_new_tokens + shift)


def refreshing(config: SamplerConfig, state: LoopState) -> jax.Array:
  """``[b]`` rows whose forward this step is the full one."""
  full = approx_cache.refreshing(config, state)
  if config.cache_mode == "dkv_greedy":  # past the schedule a step may decode more than k_max
    full |= state.step_in_blk >= _steps(config)
  return full


def _canvas(config: SamplerConfig, state: LoopState, rows: Rows):
  """``(valid, masked)`` [b, L]: positions inside the row's limit, and its masks there."""
  slot = jnp.arange(state.tokens.shape[1], dtype=jnp.int32)[None, :]
  valid = slot < rows.limit[:, None]
  return valid, valid & (state.tokens == config.mask_id)


def _predecessors(config: SamplerConfig, bits: jax.Array) -> jax.Array:
  """``bits`` and, for a token-shifted model, the position before each (its predictor)."""
  if not config.token_shift:
    return bits
  return bits | jnp.pad(bits[:, 1:], ((0, 0), (0, 1)))


def _window_plan(config: SamplerConfig, state: LoopState, rows: Rows):
  """``window`` at a cached step: ``(queries, keys, phase, active)`` [b, L] (module rules)."""
  valid, masked = _canvas(config, state, rows)
  cache = state.cache
  new = cache.masked & ~masked  # decoded by the previous step
  prev = state._replace(step_in_blk=jnp.maximum(state.step_in_blk - 1, 0))
  plan = refreshing(config, prev)[:, None]  # the previous step was the phase start
  keys = jnp.where(plan, (valid & ~masked) | sel.leftmost_masks(masked, config.window_tokens),
                   cache.keys)
  phase = jnp.where(plan, False, cache.phase | new)
  active = sel.leftmost_masks(masked, config.active_tokens)
  queries = _predecessors(config, active) | jnp.where(plan, new, phase)
  return queries, keys, phase, active


def _greedy_next(config: SamplerConfig, state: LoopState, rows: Rows):
  """``(commit, score)`` [b, B]: what the ``static`` rule with random confidence decodes at
  this step (its scores need only the step's keys), computed before the forward."""
  scfg = strategies_lib.resolve(config.strategy)
  cand = strategies_lib.restrict_candidates(scfg, loop_lib.open_positions(config, state, rows))
  keys = loop_lib.step_keys(state, rows)
  score = sel.confidence(None, jnp.zeros(cand.shape, jnp.int32), "random", keys)
  k = scheduled.static_k(state.strat["n0"], state.step_in_blk, _steps(config))
  commit = sel.ensure_progress(sel.topk_mask(score, cand, k), score, cand)
  return commit, score


def _neighbours(chosen: jax.Array, eligible: jax.Array, centers: jax.Array, width: int):
  """dKV-Cache Greedy's ``find_window_tokens`` for one row: for each center in order
  (``centers [k]``, -1 = none), the first ``width`` eligible positions not yet chosen at
  distances 1, 1, 2, 2, ... alternately left and right; returns the grown ``chosen [L]``."""
  length = chosen.shape[0]
  dist = jnp.arange(1, length, dtype=jnp.int32)
  offsets = jnp.stack([-dist, dist], axis=1).reshape(-1)  # -1, +1, -2, +2, ...

  def one(chosen, c):
    pos = c + offsets
    inside = (c >= 0) & (pos >= 0) & (pos < length)
    pos = jnp.clip(pos, 0, length - 1)
    ok = inside & eligible[pos] & ~chosen[pos]
    take = ok & (jnp.cumsum(ok) <= width)
    return chosen.at[jnp.where(take, pos, length)].set(True, mode="drop"), None

  return jax.lax.scan(one, chosen, centers)[0]


def _greedy_plan(config: SamplerConfig, state: LoopState, rows: Rows):
  """``dkv_greedy`` at a cached step: ``(queries [b, L], keys [b, L])``."""
  valid, masked = _canvas(config, state, rows)
  new = state.cache.masked & ~masked  # decoded by the previous step
  commit, score = _greedy_next(config, state, rows)
  order = sel.rank_candidates(score, commit)[0][:, :_k_max(config)]  # decoding order
  picked = jnp.take_along_axis(commit, order, axis=1)
  centers = jnp.where(picked, state.blk_start[:, None] + order, -1)
  length = state.tokens.shape[1]
  nxt = jnp.zeros_like(masked)
  nxt = nxt.at[jnp.arange(nxt.shape[0])[:, None], jnp.where(picked, centers, length)].set(
      True, mode="drop")
  chosen = nxt | new
  chosen = jax.vmap(_neighbours, in_axes=(0, 0, 0, None))(
      chosen, masked, centers, config.dkv_window_size)
  return _predecessors(config, nxt) | chosen, valid


def _plan(config: SamplerConfig, state: LoopState, rows: Rows):
  """``(queries, keys, phase)`` [b, L] of a cached step (``phase`` kept as is for greedy)."""
  if config.cache_mode == "window":
    queries, keys, phase, _ = _window_plan(config, state, rows)
    return queries, keys, phase
  queries, keys = _greedy_plan(config, state, rows)
  return queries, keys, state.cache.phase


def allowed(config: SamplerConfig, state: LoopState, rows: Rows) -> jax.Array | None:
  """``[b, B]`` block positions the step may decide (``window``'s cached steps: the active
  masks, whose logits the step computed), or None where the mode leaves every one open."""
  if config.cache_mode != "window":
    return None
  active = _window_plan(config, state, rows)[3]
  block = cache_lib.gather_windows(active, state.blk_start, config.block_size)
  return block | refreshing(config, state)[:, None]


def _query_forward(config: SamplerConfig, apply, state: LoopState, queries, keys):
  """Forward the ``queries`` (compacted into ``Q`` slots) against the cached K/V of ``keys``
  and the fresh K/V of the queries among ``keys``; the fresh K/V overwrite the cache.
  Returns ``(block logits [b, B, V], (k, v))``."""
  cache = state.cache
  bsz, length = state.tokens.shape
  width = capacity(config)
  order = jnp.argsort(~queries, axis=1, stable=True)[:, :width].astype(jnp.int32)
  valid = jnp.take_along_axis(queries, order, axis=1)
  tokens = jnp.take_along_axis(state.tokens, order, axis=1)
  kv_seg = jnp.concatenate([keys & ~queries, valid & jnp.take_along_axis(keys, order, axis=1)],
                           axis=1).astype(jnp.int32)
  z, new_kv = apply(tokens, order, masks_lib.full(width, length + width), cache=(cache.k,
                    cache.v), segment_ids=(jnp.ones(tokens.shape, jnp.int32), kv_seg),
                    return_kv=True)
  kv = approx_cache.write_kv((cache.k, cache.v), new_kv, jnp.where(valid, order, length))
  # Query at p predicts block slot p + shift - blk_start; others land past the block.
  slot = order + int(config.token_shift) - state.blk_start[:, None]
  slot = jnp.where(valid & (slot >= 0), slot, config.block_size)
  logits = jnp.zeros((bsz, config.block_size, z.shape[-1]), jnp.float32).at[
      jnp.arange(bsz)[:, None], slot].set(z.astype(jnp.float32), mode="drop")
  return logits, kv


def forward(config: SamplerConfig, apply, state: LoopState, rows: Rows, full_forward):
  """One step's forward(s): ``(block logits [b, B, V], cache, positions computed [b])``.

  ``full_forward(config, apply, state, rows) -> (block logits, (k, v))`` is the loop's exact
  whole-canvas forward.
  """
  busy = ~state.done
  refresh = refreshing(config, state)
  queries, keys, phase = _plan(config, state, rows)
  cached_rows = (~refresh & busy)[:, None]

  def full(cache):
    logits, kv = full_forward(config, apply, state, rows)
    k, v = loop_lib.select_rows(refresh & busy, kv, (cache.k, cache.v))
    return logits, cache._replace(k=k, v=v)

  def cached(cache):
    logits, kv = _query_forward(config, apply, state._replace(cache=cache), queries, keys)
    k, v = loop_lib.select_rows(cached_rows[:, 0], kv, (cache.k, cache.v))
    return logits, cache._replace(k=k, v=v)

  logits, cache = loop_lib.split_forward(config, state, refresh, full, cached, state.cache)
  masked = _canvas(config, state, rows)[1]
  cache = cache._replace(keys=jnp.where(cached_rows, keys, cache.keys),
                         phase=jnp.where(cached_rows, phase, cache.phase),
                         masked=jnp.where(busy[:, None], masked, cache.masked))
  return logits, cache, jnp.where(refresh, rows.limit, capacity(config))
