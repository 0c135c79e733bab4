"""DCD's approximate cache for full-attention models: a sliding window, refreshed by count.

DCD (Deferred Commitment Decoding: arXiv 2601.02076, github.com/shuyingte/DCD
``decode_algorithm.py`` ``window_bidirectional_decode``) decodes inside a sliding window
``[wl, wr)`` that holds the first ``sample.window`` masks (``W0``) of the active block, at most
``sample.max_window`` positions wide (the ``dcd`` strategy's candidate set,
``strategies.restrict_candidates``; ``sample.block_size=0`` makes the block the whole
generation, as DCD decodes). Its cache (``cache_type``), as ``sample.cache``:

* a *full* forward (the whole canvas, every K/V written to the cache) at a block's first step
  and whenever the row has decoded at least ``sample.cache_refresh`` tokens (DCD's
  ``refresh_count``) since its last full forward;
* otherwise a *cached* forward that queries ``[start, stop)`` against the cached K/V of every
  other position, and writes its fresh K/V back (Fast-dLLM's ``replace_position``):
  ``dcd_prefix``: ``[wl, L)``; ``dcd_dual``: ``[wl, wr)``. With ``sample.cache_delay = w > 0``
  (the reference's ``prefix-delay{w}`` / ``dual-delay{w}``; its scripts use 2) ``start =
  max(wl_prev - w, P)`` with ``wl_prev`` the window's left end at the previous step, and
  ``dcd_dual`` stops at ``min(wr + w, L)``: positions just left of the window, decoded while
  their input was still [MASK], are recomputed once more before their K/V go stale.

Deviations [bdiff], for batch invariance: the refresh counter and the window are per row (the
reference averages the decoded count over the batch and shares one window, sized by the row
with the most masks). Fixed shapes: a cached forward queries ``sample.max_new_tokens`` positions
(``dcd_prefix``, or ``dcd_dual`` without ``max_window``) or ``2 (max_window + w)``
(``dcd_dual``: the window moves at most ``max_window`` per step);
queried positions outside ``[start, stop)`` are computed but neither attended nor kept, and
``positions_computed`` counts the whole query width. Token-shifted models also query the
position before ``start``, whose logits predict it.
"""
from __future__ import annotations

import jax.numpy as jnp

from bdiff import masks as masks_lib
from bdiff.sampling import cache as cache_lib
from bdiff.sampling import loop as loop_lib
from bdiff.sampling import strategies as strategies_lib
from bdiff.sampling.loop import LoopState, Rows, SamplerConfig

MODES = ("dcd_prefix", "dcd_dual")


def init_cache(config: SamplerConfig, batch: int, length: int):
  """``(k, v, counters)``: K/V buffers; per row the tokens decoded since the last refresh,
  the open positions and the window's left end at the previous step."""
  k, v = cache_lib.init_cache(config.model, batch, length)
  zeros = jnp.zeros((batch,), jnp.int32)
  return k, v, {"since": zeros, "open": zeros, "wl": zeros}


def window(config: SamplerConfig, state: LoopState, rows: Rows):
  """``(wl, wr, open count)`` [b]: the DCD window of the active block (absolute positions).

  ``wr`` is right after the ``W0``-th mask; with fewer masks left (the span cap, the end) it
  is the cap, as the reference's ``wr`` only grows: positions right of it are still masks.
  """
  masked = loop_lib.open_positions(config, state, rows)
  cand = strategies_lib.restrict_candidates(config.strategy, masked)
  pos = loop_lib.block_positions(state, config.block_size)
  wl = jnp.min(jnp.where(cand, pos, rows.limit[:, None]), axis=-1)
  last = jnp.max(jnp.where(cand, pos + 1, 0), axis=-1)
  cap = jnp.minimum(rows.limit, jnp.minimum(state.stop_pos, loop_lib.block_end(config, state)))
  if config.strategy.max_window:
    cap = jnp.minimum(cap, wl + config.strategy.max_window)
  full = jnp.sum(cand, axis=-1) >= config.strategy.window
  wr = jnp.maximum(jnp.where(full, last, cap), wl)
  return wl, wr, jnp.sum(masked, axis=-1, dtype=jnp.int32)


def _query_width(config: SamplerConfig) -> int:
  """Static query width: the generation, or (dual) the widest span ``[wl_prev - w, wr + w)``:
  a step commits inside ``[wl, wl + max_window)``, so the window's left end moves at most
  ``max_window`` per step."""
  span = config.max_new_tokens
  if config.cache_mode == "dcd_dual" and config.strategy.max_window:
    span = min(span, 2 * (config.strategy.max_window + config.cache_delay))
  return span + int(config.token_shift)


def _span(config: SamplerConfig, state: LoopState, rows: Rows, wl, wr):
  """``[start, stop)`` [b] the cached forward recomputes (start includes a shifted model's
  predicting position), within the static query width."""
  delay, shift, width = config.cache_delay, int(config.token_shift), _query_width(config)
  start = jnp.maximum(state.cache[2]["wl"] - delay, rows.lengths) if delay else wl
  # Never right of the window; never so far left that the window leaves the query width (a
  # window that jumped far right drops the oldest delayed positions).
  start = jnp.maximum(jnp.minimum(start, wl), wr + shift - width) - shift
  stop = rows.limit
  if config.cache_mode == "dcd_dual":
    stop = jnp.minimum(wr + delay, rows.limit)
  return start, jnp.minimum(stop, start + width)


def _cached_forward(config: SamplerConfig, apply, state: LoopState, rows: Rows, wl, wr):
  """Query ``[start, stop)`` against the cache; ``(block logits [b, B, V], new k, new v)``."""
  k, v, _ = state.cache
  length, width = state.tokens.shape[1], _query_width(config)
  start, stop = _span(config, state, rows, wl, wr)
  win = cache_lib.gather_windows(state.tokens, start, width)
  pos = start[:, None] + jnp.arange(width, dtype=jnp.int32)[None, :]
  slot = jnp.arange(length, dtype=jnp.int32)[None, :]
  fresh = pos < stop[:, None]
  stale = ((slot < start[:, None]) | (slot >= stop[:, None])) & (slot < rows.limit[:, None])
  seg = (jnp.ones(win.shape, jnp.int32),
         jnp.concatenate([stale, fresh], axis=1).astype(jnp.int32))
  z, new_kv = apply(win, pos, masks_lib.full(width, length + width), cache=(k, v),
                    segment_ids=seg, return_kv=True)
  # Block position j is predicted by query index blk_start - shift + j - start.
  idx = loop_lib.block_positions(state, config.block_size) - int(config.token_shift)
  idx = jnp.clip(idx - start[:, None], 0, width - 1)
  logits = jnp.take_along_axis(z, idx[:, :, None], axis=1)
  # Write back the recomputed K/V (DCD's replace_position); other slots aim past the end.
  at = jnp.where(fresh, pos, length)
  b = jnp.arange(pos.shape[0], dtype=jnp.int32)[:, None]
  k, v = (c.at[:, b, at].set(n.astype(c.dtype), mode="drop") for c, n in zip((k, v), new_kv))
  return logits, k, v


def refreshing(config: SamplerConfig, state: LoopState, open_now) -> tuple:
  """``(refresh [b], decoded since the last refresh [b])`` (the decoded count includes the
  previous step's commits)."""
  counters = state.cache[2]
  since = counters["since"] + counters["open"] - open_now
  fresh_block = state.step_in_blk == 0
  since = jnp.where(fresh_block, 0, since)
  return fresh_block | (since >= config.cache_refresh), since


def forward(config: SamplerConfig, apply, state: LoopState, rows: Rows, full_forward):
  """One step's forward(s): ``(block logits [b, B, V], cache, positions computed [b])``.

  ``full_forward(config, apply, state, rows) -> (block logits, (k, v))`` is the loop's exact
  whole-canvas forward. Rows refresh independently (each forward under ``lax.cond``).
  """
  busy = ~state.done
  wl, wr, open_now = window(config, state, rows)
  refresh, since = refreshing(config, state, open_now)

  def full(kv):
    logits, new = full_forward(config, apply, state, rows)
    return logits, loop_lib.select_rows(refresh & busy, new, kv)

  def cached(kv):
    logits, k, v = _cached_forward(config, apply, state._replace(cache=(*kv, state.cache[2])),
                                   rows, wl, wr)
    return logits, loop_lib.select_rows(~refresh & busy, (k, v), kv)

  logits, kv = loop_lib.split_forward(config, state, refresh, full, cached, state.cache[:2])
  counters = {"since": jnp.where(refresh, 0, since), "open": open_now, "wl": wl}
  start, _ = _span(config, state, rows, wl, wr)
  width = jnp.minimum(start + _query_width(config), rows.limit) - start
  return logits, (*kv, counters), jnp.where(refresh, rows.limit, width)
