"""FlashBlock attention caching in the block-causal loop (``sample.cache="flashblock"``).

Source: FlashBlock (Caesarhhh/FlashBlock, project page; no code has been published, so the
rule below is the page's description and every detail past it is bdiff's). While a block is
denoised, the attention of its queries to all earlier tokens (*block-external*) changes little
from step to step, so it is computed once, at the block's first denoising step, and cached per
layer as its output ``O_ext`` and log-sum-exp ``LSE_ext`` (fp32); later steps of the block
compute only the *block-internal* attention (the block's queries to the block's own keys) and
merge the two parts in log space (``bdiff.attention.merge_attention``)::

  O = (exp(LSE_ext - m) O_ext + exp(LSE_int - m) O_int) / (exp(LSE_ext - m) + exp(LSE_int - m))

with ``m`` the larger LSE. It is approximate because the block's queries change between steps
(tokens get decoded; above the first layer every query also sees the changed block), while the
cached external part keeps the first step's queries. It is exact at the first step of each
block.

In bdiff (block-causal models with the exact KV cache of clean blocks, the home setting of the
page's block-diffusion numbers):

* external keys = the cache, i.e. every clean block before the active one (exact K/V, fixed
  while the block is denoised); internal keys = the active block's own K/V, fresh each step;
* a *refreshing* forward (a block's first step, every ``k``-th step with
  ``sample.cache_refresh = k``, and every commit pass) is the exact loop forward with each
  layer's attention computed as the two parts and merged: equal to ``cache="exact"`` up to fp32
  rounding. It stores the parts' ``(O_ext, LSE_ext)`` per row. The other steps attend the block
  only and merge with the stored part;
* a still-masked position of a one-layer model keeps its first-step query ([MASK] at the same
  position), so for an unshifted model the logits the strategy reads are exact (a shifted one
  reads the position before, which may have been decoded); deeper models drift, measured by
  ``bdiff.sampling.drift`` against the exact loop;
* ``commit="separate"`` only (the fused window re-queries the previous block), attention
  backends ``xla`` and ``pallas`` (those that return the LSE); the cached ``O_ext`` has the
  model's compute precision (bf16 models: bf16 values held in fp32);
* the saving is attention over the prefix (``B x P`` scores per layer per cached step);
  ``positions_computed`` equals the exact loop's (the block's positions are recomputed either
  way), so it does not show it;
* block-causal models only: in the full-attention loop a block's first step is a whole-canvas
  forward with no cache to split off, so the external part would cost one more (window) forward
  per block on top of Fast-dLLM's prefix cache; not implemented.

Rows refresh at different iterations (threshold rules finish blocks at different steps): an
iteration runs the refreshing forward for the rows that refresh and the cached one for the
others, each under ``lax.cond``, and a row's logits come from its own branch only (batch
invariant).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from bdiff.sampling import config as config_lib
from bdiff.sampling.loop import LoopState, SamplerConfig

MODE = config_lib.FLASHBLOCK_CACHE


def init_ext(config: SamplerConfig, batch: int):
  """Empty per-layer external parts: ``out [n_layers, b, B, heads, head_dim]`` (zeros) and
  ``lse [n_layers, b, heads, B]`` (``-inf``: an empty part weighs nothing), fp32."""
  m, blk = config.model, config.block_size
  out = jnp.zeros((m.n_layers, batch, blk, m.n_heads, m.head_dim), jnp.float32)
  lse = jnp.full((m.n_layers, batch, m.n_heads, blk), -jnp.inf, jnp.float32)
  return out, lse


def refreshing(config: SamplerConfig, state: LoopState) -> jax.Array:
  """``[b]`` rows whose forward attends the cache this step (and stores the external part):
  a block's first step, every ``cache_refresh``-th step, every commit pass."""
  step = state.step_in_blk
  fresh = (step == 0) | (state.needs_commit & ~state.done)
  if config.cache_refresh:
    fresh |= step % config.cache_refresh == 0
  return fresh


def _select(rows_mask: jax.Array, new, old) -> tuple:
  """``new`` where ``rows_mask [b]`` else ``old``, for per-layer tensors ``[n_layers, b, ...]``."""
  pick = lambda n, o: jnp.where(  # noqa: E731
      rows_mask.reshape((1, -1) + (1,) * (n.ndim - 2)), n, o)
  return tuple(pick(n, o) for n, o in zip(new, old))


def forward(config: SamplerConfig, apply, state: LoopState, window_forward):
  """One loop forward with FlashBlock caching.

  ``window_forward(config, apply, state, **model_kw) -> (block logits, last logit, K/V,
  *extra model outputs)`` is the exact loop's cached forward of the query window, ``model_kw``
  passed to the model (its ``return_attn_ext`` / ``attn_ext`` hook).

  Returns ``(block logits [b, B, V], raw last logit [b, V], K/V, state)`` with the stored
  external parts updated for the rows that refreshed. The last logit and K/V are the
  refreshing branch's: only commit passes (which always refresh) read them.
  """
  refresh = refreshing(config, state)
  busy = ~state.done

  def full(ext):
    block, last, kv, new_ext = window_forward(config, apply, state, return_attn_ext=True)
    return block, last, kv, _select(refresh & busy, new_ext, ext)

  def cached(ext):
    return (*window_forward(config, apply, state, attn_ext=ext), ext)

  shapes = jax.eval_shape(cached, state.attn_ext)
  zeros = lambda s: jnp.zeros(s.shape, s.dtype)  # noqa: E731
  skip = lambda ext: (*jax.tree.map(zeros, shapes[:3]), ext)  # noqa: E731
  fresh = jax.lax.cond(jnp.any(refresh & busy), full, skip, state.attn_ext)
  stale = jax.lax.cond(jnp.any(~refresh & busy), cached, skip, fresh[3])
  block = jnp.where(refresh[:, None, None], fresh[0], stale[0])
  return block, fresh[1], fresh[2], state._replace(attn_ext=fresh[3])
