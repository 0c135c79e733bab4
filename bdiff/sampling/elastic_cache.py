"""Elastic-Cache for full-attention models: per-layer caches refreshed where attention drifts.

Elastic-Cache (Nguyen-Tri et al., "Attention Is All You Need for KV Cache in Diffusion LLMs",
arXiv 2510.14973; github.com/VILA-Lab/Elastic-Cache, ``llada/generate.py``
``generate_with_elastic_cache`` and ``llada/model/modeling_llada.py``), as ``sample.cache=
"elastic"`` in ``full_attention``'s loop. Rule:

* Sliding window over masks: ``W_t`` = the first ``window`` still-masked positions of the
  active block (``sample.window``, the reference's ``window_length``; the block is the whole
  generation with ``sample.block_size=0``, as the reference decodes). Only ``W_t`` is decided,
  by the strategy (``threshold``: commit ``c >= tau`` with at least one, the reference's rule;
  ``fixed_k``: its top-k); masks past the window are not queried and keep their cached K/V.
  A committed stop token ends the row's masks (the loop's stop rule, the reference's EOS drop).
* Step 0 of a block (and every ``sample.cache_refresh`` steps, if set) is a full forward that
  fills, per layer, ``x_cache`` (the layer's input hidden states of every position) and the
  Q/K/V caches. Later steps query ``Q_t`` = tracked tokens + tokens decoded at the previous
  step + ``W_t``: layer by layer the queried rows get fresh hidden states, Q and K/V, written
  into the caches, and attend to the cached K/V of every other position.
* Drift test at each such layer ``l``: for the tracked tokens, the attention distribution of
  their previous cached query over the previous keys against the fresh one over the updated
  keys, ``sim`` = cosine similarity per head, averaged over heads and tracked tokens. If
  ``sim < gamma`` (``sample.cache_gamma``), layers ``l+1 .. L-1`` run on every position: the
  input of layer ``l+1`` is its ``x_cache`` with the queried rows replaced (depth-aware refresh).
* Tracked tokens of the next step: per layer, the attention mass that the window's masked
  queries put on each key, still-masked keys excluded, top ``sample.cache_track`` keys; the
  union over layers.

Defaults of the reference scripts: ``window_length=16``, ``tau=0.9``, ``gamma=0.9``,
``track_num=1``. Consequences of the rule: with one layer a position's K/V depend on its own
token only and every changed token is queried, so the cache is exact (``none``'s tokens).
A refresh starting at layer ``l+1`` recomputes that layer's K/V of the non-queried positions
from the very inputs they were cached from, so it first changes anything at layer ``l+2``:
``gamma > 1`` (refresh after layer 0 at every step) does not make the cache exact, since the
non-queried positions' inputs of layer 1 stay as cached.

Deviations [bdiff]:

* the decision window is the strategy's ``sample.window`` (one knob for one window), and the
  loop's block start (and ``cache_refresh``, 0 by default) also runs a full forward;
* the reference code takes ``F.cosine_similarity(..., dim=1)`` of ``[batch, heads, tracked,
  keys]`` attention maps, i.e. a cosine across heads per key, averaged over batch, tracked
  tokens and keys; here, as the paper describes it, the cosine compares distributions over
  keys, per head, averaged over heads and tracked tokens;
* every decision is per row (the reference pools the drift test and the attention mass that
  picks tracked tokens over the batch), so a row decodes the same in any batch;
* the reference's query list may hold a token twice (tracked and decoded last step); here the
  query set is a set.

Fixed shapes: ``Q_t`` is a padded index set of capacity ``track * n_layers + 2 * window`` (plus
``window`` predicting positions for token-shifted models) with a validity mask; the layers are
a ``scan`` whose carry holds each row's ``refresh started`` flag, and each layer runs its
partial and its full version under ``lax.cond`` (skipped when no row needs it), each row
taking its own branch's result. ``positions_computed`` per step = positions computed summed
over layers / ``n_layers``, rounded up, a partial layer counting the whole capacity (a full
step counts the row's canvas, as in the loop's other modes).
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from bdiff import masks as masks_lib
from bdiff.models import transformer
from bdiff.sampling import approx_cache
from bdiff.sampling import cache as cache_lib
from bdiff.sampling import loop as loop_lib
from bdiff.sampling import strategies as strategies_lib
from bdiff.sampling.loop import LoopState, Rows, SamplerConfig

MODES = ("elastic",)


def capacity(config: SamplerConfig, length: int) -> int:
  """Static size of the query set: tracked tokens, last step's commits (at most one window)
  and the window, plus its predicting positions if token-shifted."""
  window = config.strategy.window
  cap = config.cache_track * config.model.n_layers + (2 + int(config.token_shift)) * window
  return min(cap, length)


def init_cache(config: SamplerConfig, batch: int, length: int) -> dict:
  """Per layer the K/V, input hidden states ``x`` and queries ``q`` of every position; per row
  the tracked tokens and the tokens seen by the last forward."""
  m = config.model
  k, v = cache_lib.init_cache(m, batch, length)
  dtype = jnp.dtype(m.dtype)
  return dict(k=k, v=v, x=jnp.zeros((m.n_layers, batch, length, m.d_model), dtype),
              q=jnp.zeros((m.n_layers, batch, length, m.n_heads, m.head_dim), dtype),
              tracked=jnp.zeros((batch, length), bool),
              seen=jnp.full((batch, length), -1, jnp.int32))


def window(config: SamplerConfig, state: LoopState, rows: Rows) -> jax.Array:
  """``[b, L]`` the decision window on the canvas: the first ``window`` open masks."""
  blk = config.block_size
  cand = strategies_lib.restrict_candidates(config.strategy,
                                            loop_lib.open_positions(config, state, rows))
  rel = jnp.arange(state.tokens.shape[1], dtype=jnp.int32)[None, :] - state.blk_start[:, None]
  inside = (rel >= 0) & (rel < blk)
  return inside & jnp.take_along_axis(cand, jnp.clip(rel, 0, blk - 1), axis=1)


def query_set(config: SamplerConfig, state: LoopState, rows: Rows, refresh: jax.Array):
  """``(idx [b, C], valid [b, C], member [b, L], win [b, L])``: the queried positions in
  canvas order (padding after them), which slots are real, and the two masks they came from.

  A cached step queries the tracked tokens, the tokens changed since the last forward (those
  decoded at the previous step) and the window; a refreshing row (``refresh [b]``) computes
  every position anyway and reads logits of the window only, so its set is the window (all
  its tokens are "changed" at a block's first step, more than the capacity holds)."""
  length = state.tokens.shape[1]
  cache = state.cache
  win = window(config, state, rows)
  member = win | ((cache["tracked"] | (state.tokens != cache["seen"])) & ~refresh[:, None])
  if config.token_shift:  # the positions whose logits predict the window's
    member |= jnp.pad(win[:, 1:], ((0, 0), (0, 1)))
  member &= jnp.arange(length)[None, :] < rows.limit[:, None]
  order = jnp.argsort(~member, axis=1, stable=True).astype(jnp.int32)
  idx = order[:, :capacity(config, length)]
  return idx, jnp.take_along_axis(member, idx, axis=1), member, win


def _gather(x: jax.Array, idx: jax.Array) -> jax.Array:
  """Per-row ``x[r, idx[r]]`` for ``x [b, L, ...]``."""
  return jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), axis=1)


def _scatter(x: jax.Array, idx: jax.Array, valid: jax.Array, new: jax.Array) -> jax.Array:
  """Per-row ``x[r, idx[r, j]] = new[r, j]`` where ``valid[r, j]`` (others dropped)."""
  at = jnp.where(valid, idx, x.shape[1])
  rows = jnp.arange(x.shape[0])[:, None]
  return x.at[rows, at].set(new.astype(x.dtype), mode="drop")


def attention_probs(q: jax.Array, k: jax.Array, key_ok: jax.Array) -> jax.Array:
  """``[b, c, heads, L]`` softmax attention of queries ``q [b, c, heads, d]`` over keys
  ``k [b, L, kv_heads, d]`` (grouped heads, scale ``1/sqrt(d)``), keys where ``key_ok``."""
  b, c, h, d = q.shape
  kvh = k.shape[2]
  qg = q.reshape(b, c, kvh, h // kvh, d).astype(jnp.float32)
  s = jnp.einsum("bqhgd,bkhd->bqhgk", qg, k.astype(jnp.float32)) * d ** -0.5
  s = jnp.where(key_ok[:, None, None, None, :], s, -jnp.inf)
  return jax.nn.softmax(s, axis=-1).reshape(b, c, h, k.shape[1])


def drift_similarity(old: jax.Array, new: jax.Array, tracked: jax.Array) -> jax.Array:
  """``[b]`` mean over heads and tracked query slots of ``cos(old, new)`` (attention
  distributions ``[b, c, heads, L]``); 1 (no drift seen) where no slot is tracked."""
  dot = jnp.sum(old * new, -1)
  norm = jnp.linalg.norm(old, axis=-1) * jnp.linalg.norm(new, axis=-1)
  cos = jnp.mean(dot / jnp.maximum(norm, 1e-12), axis=-1)  # [b, c]
  count = jnp.sum(tracked, -1)
  total = jnp.sum(jnp.where(tracked, cos, 0.0), -1)
  return jnp.where(count > 0, total / jnp.maximum(count, 1), 1.0)


def track(config: SamplerConfig, probs: jax.Array, window_slots: jax.Array,
          key_ok: jax.Array) -> jax.Array:
  """``[b, L]`` the top ``cache_track`` keys by attention mass from the window's queries
  (``probs [b, c, heads, L]``, ``window_slots [b, c]``), among ``key_ok`` keys."""
  mass = jnp.sum(jnp.where(window_slots[:, :, None, None], probs, 0.0), axis=(1, 2))
  mass = jnp.where(key_ok, mass, -jnp.inf)
  top, at = jax.lax.top_k(mass, config.cache_track)
  rows = jnp.arange(mass.shape[0])[:, None]
  return jnp.zeros(mass.shape, bool).at[rows, at].set(jnp.isfinite(top))


class _Step(NamedTuple):
  """What every layer of one step reads (all per row)."""
  idx: jax.Array           # [b, C] queried positions
  valid: jax.Array         # [b, C] real query slots
  stale_ok: jax.Array      # [b, L] keys taken from the cache: in the row, not queried
  key_ok: jax.Array        # [b, L] keys of the row (before its limit)
  track_ok: jax.Array      # [b, L] keys that may be tracked: in the row and not [MASK]
  window_slots: jax.Array  # [b, C] slots of the decision window
  tracked_slots: jax.Array  # [b, C] slots of the tracked tokens (the drift test's)


# A layer's result, full or partial: (hidden states of every position [b, L, D] (full layers
# only), of the query slots [b, C, D], the layer's caches, attention probabilities of the query
# slots [b, C, heads, L], drift similarity [b] (partial layers only)).


def _full_layer(config: SamplerConfig, ctx: _Step, layer_p, h_in: jax.Array):
  """The layer on every position; it rewrites all of the layer's caches."""
  length = h_in.shape[1]
  pos = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), ctx.key_ok.shape)
  seg = (jnp.ones(ctx.key_ok.shape, jnp.int32), ctx.key_ok.astype(jnp.int32))
  x, (k, v), q = transformer.run_layer(config.model, layer_p, h_in, pos,
                                       masks_lib.full(length, length), segment_ids=seg)
  probs = attention_probs(_gather(q, ctx.idx), k, ctx.key_ok)
  return (x, _gather(x, ctx.idx), dict(x=h_in, q=q, k=k, v=v), probs,
          jnp.ones(ctx.idx.shape[:1], jnp.float32))


def _partial_layer(config: SamplerConfig, ctx: _Step, layer_p, h_in, xq, old: dict):
  """The layer on the query slots against the cached K/V of every other position; the
  slots' input, Q and K/V are written into the caches, and the tracked tokens' attention
  before and after gives the drift similarity."""
  width, length = xq.shape[1], ctx.key_ok.shape[1]
  kv_seg = jnp.concatenate([ctx.stale_ok, ctx.valid], axis=1).astype(jnp.int32)
  x, (k, v), q = transformer.run_layer(
      config.model, layer_p, xq, ctx.idx, masks_lib.full(width, length + width),
      segment_ids=(jnp.ones(ctx.valid.shape, jnp.int32), kv_seg), cache=(old["k"], old["v"]))
  new = {name: _scatter(old[name], ctx.idx, ctx.valid, value)
         for name, value in (("x", xq), ("q", q), ("k", k), ("v", v))}
  probs = attention_probs(q, new["k"], ctx.key_ok)
  before = attention_probs(_gather(old["q"], ctx.idx), old["k"], ctx.key_ok)
  return h_in, x, new, probs, drift_similarity(before, probs, ctx.tracked_slots)


def _layers(config: SamplerConfig, params, ctx: _Step, cache: dict, tokens, refresh, busy):
  """All layers (a scan), each full for the rows that refresh from it on, partial for the
  others, each version under ``lax.cond`` and skipped when no busy row needs it.

  Returns ``(x of the query slots [b, C, D], per-layer caches, tracked [b, L], full layers
  per row [b])``."""
  cfg = config.model
  probs_shape = ctx.idx.shape + (cfg.n_heads, tokens.shape[1])

  def layer(carry, xs):
    xq, h_full, full_prev, started, tracked, n_full = carry
    layer_p, old = xs
    # Input of every position: the previous full layer's output, or the cached input with
    # the query rows replaced (where a depth-aware refresh starts, and for partial layers).
    h_in = jnp.where(full_prev[:, None, None], h_full,
                     _scatter(old["x"], ctx.idx, ctx.valid, xq))
    skip = (h_in, xq, old, jnp.zeros(probs_shape, jnp.float32),
            jnp.ones(refresh.shape, jnp.float32))
    full = jax.lax.cond(jnp.any(started & busy),
                        lambda: _full_layer(config, ctx, layer_p, h_in), lambda: skip)
    part = jax.lax.cond(jnp.any(~started & busy),
                        lambda: _partial_layer(config, ctx, layer_p, h_in, xq, old),
                        lambda: skip)
    out = jax.tree.map(lambda a, b: jnp.where(
        started.reshape(started.shape + (1,) * (a.ndim - 1)), a, b), full, part)
    tracked |= track(config, out[3], ctx.window_slots, ctx.track_ok)
    carry = (out[1], full[0], started, started | (part[4] < config.cache_gamma), tracked,
             n_full + started.astype(jnp.int32))
    return carry, out[2]

  init = (transformer.embed_tokens(cfg, params, _gather(tokens, ctx.idx)),
          transformer.embed_tokens(cfg, params, tokens), refresh, refresh,
          jnp.zeros(ctx.key_ok.shape, bool), jnp.zeros(refresh.shape, jnp.int32))
  old = {name: cache[name] for name in ("x", "q", "k", "v")}
  carry, caches = jax.lax.scan(layer, init,
                               (transformer.stacked_layer_params(cfg, params), old))
  return carry[0], caches, carry[4], carry[5]


def _keep_rows(rows: jax.Array, new: jax.Array, old: jax.Array, axis: int) -> jax.Array:
  """``new`` for the rows ``rows [b]`` (batch axis ``axis``), ``old`` for the others."""
  shape = [1] * new.ndim
  shape[axis] = rows.shape[0]
  return jnp.where(rows.reshape(shape), new, old)


def _context(config: SamplerConfig, state: LoopState, rows: Rows, refresh) -> _Step:
  idx, valid, member, win = query_set(config, state, rows, refresh)
  key_ok = jnp.arange(state.tokens.shape[1])[None, :] < rows.limit[:, None]
  return _Step(idx=idx, valid=valid,
               stale_ok=key_ok & ~member, key_ok=key_ok,
               track_ok=key_ok & (state.tokens != config.mask_id),
               window_slots=_gather(win, idx) & valid,
               tracked_slots=_gather(state.cache["tracked"], idx) & valid)


def _block_logits(config: SamplerConfig, state: LoopState, ctx: _Step, logits):
  """``[b, B, V]`` the active block's logits from the query slots' ``logits [b, C, V]``
  (zeros where a block position was not predicted: outside the window, never decided)."""
  length = state.tokens.shape[1]
  slots = jnp.arange(ctx.idx.shape[1], dtype=jnp.int32)
  slot_of = jnp.zeros((ctx.idx.shape[0], length), jnp.int32)
  slot_of = _scatter(slot_of, ctx.idx, ctx.valid, jnp.broadcast_to(slots, ctx.idx.shape))
  known = _scatter(jnp.zeros(slot_of.shape, bool), ctx.idx, ctx.valid, ctx.valid)
  pos = loop_lib.block_positions(state, config.block_size) - int(config.token_shift)
  at = jnp.clip(pos, 0, length - 1)
  got = _gather(logits, jnp.take_along_axis(slot_of, at, axis=1))
  ok = jnp.take_along_axis(known, at, axis=1) & (pos >= 0)
  return jnp.where(ok[:, :, None], got, 0.0)


def forward(config: SamplerConfig, params, state: LoopState, rows: Rows):
  """One step: ``(block logits [b, B, V], cache, positions computed [b])``."""
  busy = ~state.done
  refresh = approx_cache.refreshing(config, state)
  ctx = _context(config, state, rows, refresh)
  xq, caches, tracked, n_full = _layers(config, params, ctx, state.cache, state.tokens,
                                        refresh, busy)
  logits = _block_logits(config, state, ctx, transformer.output_logits(config.model, params,
                                                                       xq))
  new = dict(caches, tracked=tracked, seen=state.tokens)
  cache = {name: _keep_rows(busy, new[name], state.cache[name], 1 if name in caches else 0)
           for name in new}
  n = config.model.n_layers
  partial = jnp.minimum(ctx.idx.shape[1], rows.limit)
  positions = -(-(n_full * rows.limit + (n - n_full) * partial) // n)
  return logits, cache, positions
