"""More rungs of the approximate-cache ladder for full-attention models: dKV-Cache and a
windowed cache after Window-Diffusion.

Both run inside ``full_attention``'s semi-autoregressive loop (blocks of ``sample.block_size``)
beside Fast-dLLM v1's ``prefix`` / ``dual``, and keep one extra bit per canvas position: is the
position's K/V taken from the cache (``cached``) or computed fresh by this step's forward. A
step is either a *full* forward (the whole canvas, exact, rewrites the cache and the bits) or a
*cached* forward, whose queries are a fixed-width window and whose keys are the cached slots
whose bit is set plus the window's own fresh K/V where it is not; nothing else is attended.

* ``dkv``: dKV-Cache, the *Decode* variant (Ma et al., "dKV-Cache: The Cache for Diffusion
  Language Models", arXiv 2505.15781, github.com/horseee/dKV-Cache
  ``generation_utils/llada_dkv_cache_decode.py``). A token's K/V are unstable in the step it is
  decoded (its input was still [MASK]) and stable afterwards, so they are cached one step after
  decoding. Rule, with ``i`` the step inside the block and ``k = sample.cache_refresh`` (the
  reference's ``cache_reloading_step``; 0 = never reload inside a block): steps ``i = 0`` and
  ``i = 1``, and every ``i`` with ``i mod k = 0``, run the full forward, after which every decoded
  token (prompt included) is cached; the other steps are cached forwards whose queries are the
  still-masked positions and the tokens decoded at the previous step (fresh K/V), attending to
  the cached K/V of every older decoded token; the tokens decoded at the previous step are then
  written to the cache. Fixed shape: the queried window is ``[block start, row limit)`` (the
  block and the masks after it, as the reference queries every mask); rows of that window that
  are already cached are computed too but their fresh K/V are never attended (the cached ones
  are), so the result is the reference rule's, and ``positions_computed`` counts the whole
  window. The *Greedy* variant (random order known in advance, local window) is not
  implemented.

* ``window_block``: Window-Diffusion's active / buffer / far-field partition (Window-Diffusion,
  arXiv 2601.20332, github.com/vhicrgit/Window-Diffusion ``llada/model/modeling_llada.py``)
  placed on the semi-AR block. Phases of ``k = sample.cache_refresh`` steps (0 = one phase per
  block) start with a full forward that caches every K/V and fixes the phase's plan: keys = all
  decoded tokens plus the first ``W`` still-masked positions in canvas order (the buffer,
  ``W = 4 x block_size``, the ratio of the reference READMEs: 64/16 for LLaDA, 128/32 for
  Dream); masks past those (the far field) are neither queried nor attended. The other steps
  query the active block only: its masks and the tokens decoded in this phase get fresh K/V,
  tokens decoded before the phase and the buffer keep their phase-start K/V. Deviation, hence
  the name: the reference's active set is the first ``active_tokens`` masks anywhere (it slides
  as tokens are decoded, and phase-start decisions range over every mask); here it is the
  loop's block, which stays put until full, and ``W`` is fixed at 4 blocks rather than a key.

Token-shifted models (Dream): the window also queries the position just before the block,
whose logits predict the block's first position (its K/V come from the cache like any older
token's).

Per-row and batch invariant: rows refresh at different iterations; an iteration runs the full
forward for the rows that refresh and the cached forward for the others, each under
``lax.cond``, and every cache write and bit is selected per row. Drift from the exact
``cache="none"`` is measured by ``bdiff.sampling.drift``.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from bdiff import masks as masks_lib
from bdiff.sampling import cache as cache_lib
from bdiff.sampling import config as config_lib
from bdiff.sampling import loop as loop_lib
from bdiff.sampling.loop import LoopState, Rows, SamplerConfig

MODES = config_lib.LADDER_CACHES
WINDOW_BLOCKS = 4  # Window-Diffusion buffer: window_tokens / active_tokens in its READMEs


def init_cache(config: SamplerConfig, batch: int, length: int):
  """``(k, v, cached)``: the K/V buffers and the per-position "K/V come from the cache" bits."""
  k, v = cache_lib.init_cache(config.model, batch, length)
  return k, v, jnp.zeros((batch, length), bool)


def refreshing(config: SamplerConfig, state: LoopState) -> jax.Array:
  """``[b]`` rows whose forward this step is the full one (see the module rules)."""
  step, k = state.step_in_blk, config.cache_refresh
  full = step == 0
  if config.cache_mode == "dkv":
    full |= step == 1
  if k:
    full |= step % k == 0
  return full


def _window(config: SamplerConfig, state: LoopState):
  """``(start [b], width)`` of the cached forward's queries: the block and what follows it
  (``dkv``) or the block (``window_block``), from the predicting position if shifted."""
  span = config.max_new_tokens if config.cache_mode == "dkv" else config.block_size
  shift = int(config.token_shift)
  return state.blk_start - shift, span + shift


def _bits_after_refresh(config: SamplerConfig, state: LoopState, rows: Rows) -> jax.Array:
  """``[b, L]`` positions whose K/V the steps after a full forward take from the cache."""
  slot = jnp.arange(state.tokens.shape[1], dtype=jnp.int32)[None, :]
  valid = slot < rows.limit[:, None]
  masked = state.tokens == config.mask_id
  bits = valid & ~masked
  if config.cache_mode == "window_block":
    # The buffer: the first W masks in canvas order; past the block every position is a mask.
    blk_end = state.blk_start + config.block_size
    in_block = (slot >= state.blk_start[:, None]) & (slot < blk_end[:, None])
    open_in_block = jnp.sum(masked & valid & in_block, axis=1)
    buffer_end = blk_end + WINDOW_BLOCKS * config.block_size - open_in_block
    bits |= valid & (slot >= blk_end[:, None]) & (slot < buffer_end[:, None])
  return bits


def write_kv(kv, new_kv, pos: jax.Array):
  """Per-row ``k/v[:, r, pos[r, j]] = new_kv[:, r, j]`` (a scatter; a ``pos`` past the cache's
  end is dropped, which is how callers skip a slot)."""
  rows = jnp.arange(pos.shape[0], dtype=jnp.int32)[:, None]
  return tuple(c.at[:, rows, pos].set(n.astype(c.dtype), mode="drop")
               for c, n in zip(kv, new_kv))


def _write_positions(cache, new_kv, start: jax.Array, write: jax.Array):
  """Per-row ``k/v[:, r, start[r] + j] = new_kv[:, r, j]`` and the bit set where
  ``write[r, j]``."""
  k, v, bits = cache
  b, w = write.shape
  pos = jnp.where(write, start[:, None] + jnp.arange(w, dtype=jnp.int32)[None, :],
                  bits.shape[1])
  rows = jnp.arange(b, dtype=jnp.int32)[:, None]
  k, v = write_kv((k, v), new_kv, pos)
  return k, v, bits.at[rows, pos].set(True, mode="drop")


def _cached_forward(config: SamplerConfig, apply, state: LoopState, rows: Rows, write_rows):
  """Query the window against the cached slots and its own uncached positions.

  Returns ``(block logits [b, B, V], cache)``; for ``dkv`` the window's tokens decoded at the
  previous step (non-mask, not yet cached) are then cached, in the rows ``write_rows``.
  """
  k, v, bits = state.cache
  length = state.tokens.shape[1]
  start, width = _window(config, state)
  win = cache_lib.gather_windows(state.tokens, start, width)
  pos = start[:, None] + jnp.arange(width, dtype=jnp.int32)[None, :]
  fresh = (pos < rows.limit[:, None]) & ~cache_lib.gather_windows(bits, start, width)
  kv_seg = jnp.concatenate([bits, fresh], axis=1).astype(jnp.int32)
  z, new_kv = apply(win, pos, masks_lib.full(width, length + width), cache=(k, v),
                    segment_ids=(jnp.ones(win.shape, jnp.int32), kv_seg), return_kv=True)
  cache = state.cache
  if config.cache_mode == "dkv":
    write = fresh & (win != config.mask_id) & write_rows[:, None]
    cache = _write_positions(cache, new_kv, start, write)
  return z[:, :config.block_size], cache


def forward(config: SamplerConfig, apply, state: LoopState, rows: Rows, full_forward):
  """One step's forward(s): ``(block logits [b, B, V], cache, positions computed [b])``.

  ``full_forward(config, apply, state, rows) -> (block logits, (k, v))`` is the loop's exact
  whole-canvas forward.
  """
  busy = ~state.done
  refresh = refreshing(config, state)

  def full(cache):
    logits, kv = full_forward(config, apply, state, rows)
    sel = refresh & busy
    k, v = loop_lib.select_rows(sel, kv, cache[:2])
    bits = jnp.where(sel[:, None], _bits_after_refresh(config, state, rows), cache[2])
    return logits, (k, v, bits)

  # Cached rows read and write only their own cache rows, which the full forward left alone.
  cached_rows = ~refresh & busy
  logits, cache = loop_lib.split_forward(
      config, state, refresh, full,
      lambda c: _cached_forward(config, apply, state._replace(cache=c), rows, cached_rows),
      state.cache)
  start, width = _window(config, state)
  window = jnp.minimum(start + width, rows.limit) - start
  return logits, cache, jnp.where(refresh, rows.limit, window)
