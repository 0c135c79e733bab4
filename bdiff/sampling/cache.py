"""The sampler's exact block KV cache (block_diffusion.md §3.8, decoding.md §1.3-1.4).

The cache is preallocated for the whole row buffer, ``(k, v)`` each
``[n_layers, b, L, kv_heads, head_dim]``, holding post-RoPE keys at absolute (row-local)
positions. A row's valid prefix is ``[0, cache_len[r])``; it only ever holds *clean* blocks,
written once by the commit pass that re-runs the finished block (never the K/V of a denoising
step, which saw [MASK] inputs). Rows advance independently, so every write and every
validity test is per row (masked, fixed-shape); nothing is indexed dynamically by a traced
length except the per-row window start.

Exactness: a clean block's K/V depend only on blocks at or before it under the block-causal
mask, so the cache equals what a full recomputation would produce (``exact = True``).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from bdiff import masks as masks_lib

EXACT = True  # logged with results (decoding.md §1.4)

Cache = tuple[jax.Array, jax.Array]


def init_cache(model_cfg, batch: int, length: int) -> Cache:
  """Zeros ``(k, v)`` each ``[n_layers, batch, length, kv_heads, head_dim]`` (compute dtype)."""
  shape = (model_cfg.n_layers, batch, length, model_cfg.n_kv_heads, model_cfg.head_dim)
  zeros = jnp.zeros(shape, jnp.dtype(model_cfg.dtype))
  return zeros, zeros


def gather_windows(x: jax.Array, start: jax.Array, width: int) -> jax.Array:
  """Per-row ``x[r, start[r] : start[r] + width]`` for ``x [b, L, ...]`` (indices clipped)."""
  idx = start[:, None] + jnp.arange(width, dtype=jnp.int32)[None, :]
  idx = jnp.clip(idx, 0, x.shape[1] - 1)
  idx = idx.reshape(idx.shape + (1,) * (x.ndim - 2))
  return jnp.take_along_axis(x, idx, axis=1)


def _write_row(row: jax.Array, new_row: jax.Array, start: jax.Array, write: jax.Array,
               axis: int) -> jax.Array:
  """``row[..., start : start + w, ...] = new_row`` along ``axis`` if ``write`` (in place)."""
  idx = tuple(start if a == axis else 0 for a in range(row.ndim))
  # A row that does not write stores back what it read: the update stays an in-place
  # dynamic_update_slice instead of a select over the whole buffer.
  old = jax.lax.dynamic_slice(row, idx, new_row.shape)
  return jax.lax.dynamic_update_slice(row, jnp.where(write, new_row, old), idx)


def update_windows(x: jax.Array, new: jax.Array, start: jax.Array,
                   write: jax.Array) -> jax.Array:
  """Per-row ``x[r, start[r] : start[r] + w] = new[r]`` where ``write[r]`` (``x [b, L, ...]``)."""
  return jax.vmap(lambda r, n, s, w: _write_row(r, n, s, w, 0))(x, new, start, write)


def write_blocks(cache: Cache, new_kv: Cache, start: jax.Array, write: jax.Array) -> Cache:
  """Write a block's ``(k, v)`` ``[n_layers, b, w, h, d]`` at per-row ``start`` where ``write``.

  One scatter per tensor on the cache's own ``[n_layers, b, L, ...]`` layout, indexed by
  (row, position): a ``vmap`` of per-row slice updates over axis 1 made XLA transpose the whole
  cache to rows-first and back (three full copies per iteration on CPU), while this scatter
  updates the loop carry in place and touches only the ``b x w`` written slots. Rows that do
  not write aim past the end (``L``) and are dropped.
  """
  w, length = new_kv[0].shape[2], cache[0].shape[2]
  rows = jnp.arange(start.shape[0], dtype=jnp.int32)[:, None]
  pos = jnp.where(write, start, length)[:, None] + jnp.arange(w, dtype=jnp.int32)[None, :]
  # Writing rows' windows lie inside [0, L) (clean blocks); the rest are all >= L. No index
  # is negative, so ``.at`` never wraps one around.
  return tuple(c.at[:, rows, pos].set(n.astype(c.dtype), mode="drop", indices_are_sorted=True,
                                     unique_indices=True)
               for c, n in zip(cache, new_kv))


def window_segments(window_start: jax.Array, cache_size: int,
                    width: int) -> tuple[jax.Array, jax.Array]:
  """Per-row key validity of a query window against the cache, as segment ids.

  The attention mask of the cached forward is the static ``masks.cache_window(width,
  cache_size, B)``; what differs per row is which keys exist, given here as segments: every
  query is in segment 1, and a key is in segment 1 iff it is valid, i.e. a cache slot
  ``j < window_start[r]`` (the cache holds every clean block before the window) or a window
  key at a non-negative position (fused mode's missing previous block of a row's first block
  sits at negative positions). Such dummy queries see no key at all: every backend returns 0
  for an empty row, and nothing reads their outputs (their K/V are never written, and the
  logits they give predict prompt positions, which are never decoded).

  Args:
    window_start: ``[b]`` int32 per-row window start (block aligned, may be negative).
    cache_size: L, the cache length.
    width: the query window width.

  Returns:
    ``(q_seg [b, width], kv_seg [b, cache_size + width])`` int32.
  """
  b = window_start.shape[0]
  j = jnp.arange(cache_size, dtype=jnp.int32)[None, :]
  w = jnp.arange(width, dtype=jnp.int32)[None, :]
  valid = jnp.concatenate([j < window_start[:, None], window_start[:, None] + w >= 0], axis=1)
  return jnp.ones((b, width), jnp.int32), valid.astype(jnp.int32)


def prefill(apply_fn, tokens: jax.Array, cache: Cache, clean_len: jax.Array,
            block_size: int) -> tuple[Cache, jax.Array]:
  """Run the prompts' whole blocks once and store their K/V (block_diffusion.md §3.8).

  Every row's first ``clean_len[r] = ⌊P_r / B⌋·B`` tokens are clean prompt blocks; one forward
  over the shared width ``tokens.shape[1]`` (a multiple of ``B``) under the block-causal mask
  computes them, since later positions (prompt tails, [MASK]) cannot reach earlier blocks.

  Args:
    apply_fn: ``apply_fn(tokens, positions, mask, cache=None, return_kv=True)``.
    tokens: ``[b, n]`` row buffers' first ``n`` tokens, ``n % block_size == 0``.
    cache: the preallocated cache.
    clean_len: ``[b]`` int32 number of tokens to store per row.
    block_size: B.

  Returns:
    The updated cache and the prefill logits ``[b, n, V]``.
  """
  b, n = tokens.shape
  positions = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (b, n))
  logits, (k, v) = apply_fn(tokens, positions, masks_lib.block_causal(n, n, block_size),
                            return_kv=True)
  keep = (jnp.arange(n)[None, :] < clean_len[:, None])[None, :, :, None, None]
  cache = tuple(c.at[:, :, :n].set(jnp.where(keep, x.astype(c.dtype), 0))
                for c, x in zip(cache, (k, v)))
  return cache, logits
