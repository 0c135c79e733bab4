"""The sampler's exact block KV cache.

The cache is preallocated for the whole row buffer, ``(k, v)`` each
``[n_layers, b, L, kv_heads, head_dim]``, holding post-RoPE keys at absolute (row-local)
positions. A row's valid prefix is ``[0, blk_start[r])``; it only ever holds *clean* blocks,
written once by the prefill or by the commit pass that re-runs a finished block (never the K/V
of a denoising step, which saw [MASK] inputs). This is the cache of BD3-LM (Arriola et al.,
ICLR 2025, kuleshov-group/bd3lms) and Fast-dLLM v2 (Wu et al., 2025). Rows advance
independently, so every write and every validity test is per row (masked, fixed-shape);
nothing is indexed dynamically by a traced length except the per-row window start.

Exactness: a clean block's K/V depend only on clean positions at or before it (block-causal
or token-causal, as the model was trained, see ``window_masks``), so the cache equals what a
full recomputation would produce (``EXACT = True``), and the sampler's tests check it against
the no-cache reference token by token.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from bdiff.sampling import window_masks

EXACT = True  # the cache is exact, not an approximation (recorded with results)

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
  """Write a window's ``(k, v)`` ``[n_layers, b, w, h, d]`` at per-row ``start`` where ``write``.

  ``write`` is ``[b]`` (whole windows) or ``[b, w]`` (per position). One scatter per tensor on
  the cache's own ``[n_layers, b, L, ...]`` layout, indexed by (row, position): a ``vmap`` of
  per-row slice updates over axis 1 made XLA transpose the whole cache to rows-first and back
  (three full copies per iteration on CPU), while this scatter updates the loop carry in place
  and touches only the ``b x w`` written slots. Slots that are not written aim past the end
  (``L`` and beyond) and are dropped.
  """
  w, length = new_kv[0].shape[2], cache[0].shape[2]
  b = start.shape[0]
  write = jnp.broadcast_to(write.reshape(b, -1), (b, w))
  rows = jnp.arange(b, dtype=jnp.int32)[:, None]
  offset = jnp.arange(w, dtype=jnp.int32)[None, :]
  # Written slots are clean positions inside [0, L) and precede the dropped ones (L + offset),
  # so indices stay sorted and unique, and none is negative (``.at`` never wraps one around).
  pos = jnp.where(write, start[:, None] + offset, length + offset)
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


def prefill_forwards(n: int, chunk: int) -> int:
  """Forwards :func:`prefill` runs for ``n`` clean prompt positions, ``chunk`` per forward."""
  return -(-n // min(chunk, n)) if n else 0


def prefill(apply_fn, tokens: jax.Array, cache: Cache, clean_len: jax.Array,
            block_size: int, *, chunk: int, vocab_size: int, context_causal: bool = False
            ) -> tuple[Cache, jax.Array]:
  """Store the prompts' whole blocks in the cache, ``chunk`` positions per forward.

  Every row's first ``clean_len[r] = (P_r // B) * B`` tokens are clean prompt blocks. Each
  chunk is a cached forward of ``chunk`` queries against the cache filled so far, so a long
  prompt costs ``chunk x (L + chunk)`` attention scores per forward (memory linear in the
  prompt length) instead of one dense ``n x n`` pass. Later positions (prompt tails, [MASK],
  padding) cannot reach earlier clean positions under either mask, so their K/V are computed
  but never stored, and only positions below ``clean_len`` are written.

  Args:
    apply_fn: ``apply_fn(tokens, positions, mask, cache=, segment_ids=, return_kv=True)``.
    tokens: ``[b, n]`` row buffers' first ``n`` tokens, ``n % block_size == 0``.
    cache: the preallocated cache (zeros).
    clean_len: ``[b]`` int32 number of tokens to store per row.
    block_size: B.
    chunk: queries per forward, a multiple of B (clipped to ``n``).
    vocab_size: V, the width of the returned logits.
    context_causal: the model's clean stream is token-causal (else block-causal).

  Returns:
    The filled cache and ``[b, V]`` logits at position ``clean_len - 1`` (zeros for rows with
    no whole prompt block): the prediction of the first position after the clean prompt,
    which token-shifted models use.
  """
  b, n = tokens.shape
  length = cache[0].shape[2]
  chunk = min(chunk, n)
  n_chunks = prefill_forwards(n, chunk)
  padded = jnp.pad(tokens, ((0, 0), (0, n_chunks * chunk - n)))
  mask = window_masks.clean_mask(chunk, length, block_size, context_causal)
  offset = jnp.arange(chunk, dtype=jnp.int32)

  def body(c, carry):
    cache, last = carry
    start = c * chunk
    pos = jnp.broadcast_to(start + offset, (b, chunk))
    ws = jnp.full((b,), start, jnp.int32)
    logits, kv = apply_fn(jax.lax.dynamic_slice_in_dim(padded, start, chunk, axis=1), pos,
                          mask, cache=cache, segment_ids=window_segments(ws, length, chunk),
                          return_kv=True)
    cache = write_blocks(cache, kv, ws, pos < clean_len[:, None])
    here = (clean_len - 1 >= start) & (clean_len - 1 < start + chunk)
    at = gather_windows(logits, clean_len - 1 - start, 1)[:, 0]
    return cache, jnp.where(here[:, None], at, last)

  last = jnp.zeros((b, vocab_size), jnp.float32)
  return jax.lax.fori_loop(0, n_chunks, body, (cache, last))
