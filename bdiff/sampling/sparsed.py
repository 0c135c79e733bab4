"""SparseD: head-specific block-sparse attention patterns, computed once and reused.

SparseD (Wang et al., "SparseD: Sparse Attention for Diffusion Language Models", arXiv
2509.24014; INV-WZQ/SparseD ``models/LLaDA/modeling_llada.py`` and ``create_attention_block_mask``
in ``SparseD_utils.py``) observes that a diffusion LM's attention pattern per head changes
little across denoising steps, so it fixes one block-sparse pattern early and reuses it:

* ``t`` counts a row's denoising steps over the whole generation from 0 (the repository's
  ``now_step``), ``T`` is their planned total and ``t_s = floor(T * skip) + 1``.
* Steps ``t <= t_s`` attend fully. At ``t = t_s`` every layer and head gets a pattern of
  ``tile x tile`` tiles: for each query tile, the importance of a key tile is the mean softmax
  probability over the tile, and the top ``floor(n_kv_tiles * select) + 1`` key tiles are kept.
  This is done twice and OR-ed: with the softmax over all keys (kept for the prompt-side key
  tiles, those before the first tile that starts inside the generation) and with the softmax
  restricted to the generation-side key tiles (kept for those tiles, top-k counted among them).
* Steps ``t > t_s`` attend only to the kept tiles, for every remaining step and block.

Execution: the pattern becomes a runtime ``SparsityPlan`` of the block-sparse kernels
(``plan_from_selection``) per layer, row and query head. With ``model.attention_impl="pallas"``
the kernels visit only the kept tiles (the saving SparseD gets from FlexAttention); every other
impl applies the same plan as a dense bool mask: identical output, **no saving**. The pattern
rides in the loop carry's cache slot (``sample.cache="none"``, which stores no K/V).

Deviations from the repository, by design:
  * probabilities use the model's own logit scale ``1/sqrt(head_dim)``; the repository divides
    by ``sqrt(num_heads)`` (it only ranks tiles, but the temperature changes the ranking);
  * ``T`` is the planned step count (blocks x ``sample.steps``); under threshold strategies a
    row may finish in fewer steps, and one that finishes by ``t_s`` never runs sparse;
  * rows are ragged: tile counts, the generation's first tile and ``k`` are per row (from its
    prompt length and budget); keys past a row's budget stay invisible and count as padding;
  * ``k`` is capped at the available tiles (``select = 1`` keeps every tile: dense), where
    the repository's ``topk`` would fail;
  * only the full-attention semi-AR loop (LLaDA's home setting) hosts it, with no K/V cache.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from bdiff import masks as masks_lib
from bdiff.sampling import loop as loop_lib
from pallas_kernels.block_sparse_attention import plan as plan_lib

MODES = ("none", "sparsed")


def total_steps(config) -> int:
  """``T``: the planned denoising steps over the whole generation (blocks x steps)."""
  blocks = -(-config.max_new_tokens // config.block_size)
  return blocks * config.strategy.steps


def switch_step(config) -> int:
  """``t_s = floor(T * skip) + 1``: the step (counted from 0) whose forward fixes the pattern."""
  return math.floor(total_steps(config) * config.sparsed_skip) + 1


def keep_count(n_tiles, select: float):
  """Tiles kept per query tile among ``n_tiles``: ``floor(n_tiles * select) + 1``, capped."""
  n = jnp.asarray(n_tiles, jnp.float32)
  return jnp.minimum(jnp.floor(n * select).astype(jnp.int32) + 1, jnp.asarray(n_tiles))


def _capacity(n_tiles: int, select: float) -> int:
  """Static bound on the tiles one query tile keeps (both passes together)."""
  one = min(math.floor(n_tiles * select) + 1, n_tiles)
  return min(2 * one, n_tiles)


def _top_tiles(score, allowed, k):
  """bool [..., nk]: the ``k [b]`` best tiles of each row among ``allowed`` (lowest index first
  on ties), never a disallowed one."""
  nk = score.shape[-1]
  score = jnp.where(allowed, score, -jnp.inf)
  order = jax.lax.top_k(score, nk)[1]  # best first
  ranked = jnp.arange(nk) < k[:, None, None, None]
  chosen = jnp.any((order[..., None] == jnp.arange(nk)) & ranked[..., None], axis=-2)
  return chosen & allowed


def _tile_importance(probs, tile: int):
  """[b, h, S, S] probabilities (S a multiple of ``tile``) -> mean per tile [b, h, nq, nk]."""
  b, h, s, _ = probs.shape
  n = s // tile
  return probs.reshape(b, h, n, tile, n, tile).sum(axis=(3, 5)) / (tile * tile)


def _softmax(logits, allowed):
  logits = jnp.where(allowed, logits, -jnp.inf)
  top = jnp.max(logits, axis=-1, keepdims=True)
  p = jnp.exp(logits - jnp.where(jnp.isfinite(top), top, 0.0))
  denom = jnp.sum(p, axis=-1, keepdims=True)
  return p / jnp.where(denom == 0, 1.0, denom)


def layer_pattern(q, k, lengths, limit, *, tile: int, select: float):
  """One layer's SparseD selection.

  Args:
    q: [b, S, heads, d] post-RoPE queries; k: [b, S, kv_heads, d] post-RoPE keys.
    lengths, limit: [b] prompt lengths and budgets (keys at or past ``limit`` are invisible).
    tile: tile size; select: keep ratio.

  Returns:
    bool [b, heads, n, n] kept key tiles per query tile, ``n = ceil(S / tile)``.
  """
  b, s, h, d = q.shape
  n = -(-s // tile)
  pad = ((0, 0), (0, n * tile - s), (0, 0), (0, 0))
  q = jnp.pad(q.astype(jnp.float32), pad)
  k = jnp.repeat(jnp.pad(k.astype(jnp.float32), pad), h // k.shape[2], axis=2)
  logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, precision=jax.lax.Precision.HIGHEST)
  logits = logits / math.sqrt(d)
  pos = jnp.arange(n * tile)
  n_row = -(-limit // tile)  # the row's tiles
  first_gen = jnp.minimum(-(-lengths // tile), n_row - 1)  # first tile starting in generation
  key_ok = (pos[None, :] < limit[:, None])[:, None, None, :]
  gen_key = (pos[None, :] >= (first_gen * tile)[:, None])[:, None, None, :]
  q_ok = (pos[None, :] < limit[:, None])[:, None, :, None]
  j = jnp.arange(n)[None, :]
  row_tiles = (j < n_row[:, None])[:, None, None, :]
  gen_tiles = (j >= first_gen[:, None])[:, None, None, :]
  over_all = _tile_importance(jnp.where(q_ok, _softmax(logits, key_ok), 0.0), tile)
  over_gen = _tile_importance(jnp.where(q_ok, _softmax(logits, key_ok & gen_key), 0.0), tile)
  prompt_side = _top_tiles(over_all, row_tiles, keep_count(n_row, select)) & ~gen_tiles
  gen_side = _top_tiles(over_gen, row_tiles & gen_tiles,
                        keep_count(n_row - first_gen, select))
  return prompt_side | gen_side


def _plans(sel, length: int, tile: int, select: float) -> plan_lib.SparsityPlan:
  """Per-layer runtime plans of selections [n_layers, b, heads, n, n] over a length-S canvas."""
  mask = masks_lib.full(length, length)
  cap = _capacity(sel.shape[-1], select)
  build = lambda s: plan_lib.plan_from_selection(s, mask, block_q=tile, block_k=tile,  # noqa: E731
                                                 capacity=cap)
  return jax.vmap(build)(sel)


def init_state(config, bsz: int, length: int) -> plan_lib.SparsityPlan:
  """An empty pattern (no tile kept) per layer, row and head, until ``t_s`` fills it."""
  m = config.model
  n = -(-length // config.sparsed_tile)
  sel = jnp.zeros((m.n_layers, bsz, m.n_heads, n, n), bool)
  return _plans(sel, length, config.sparsed_tile, config.sparsed_select)


def _layer_queries(intermediates, n_layers: int):
  """The sown post-RoPE queries as [n_layers, b, S, heads, d] (scanned or unrolled layers)."""
  if "layers" in intermediates:
    return intermediates["layers"]["attn"]["attn_q"][0]
  return jnp.stack([intermediates[f"layer_{i}"]["attn"]["attn_q"][0] for i in range(n_layers)])


def patterns(config, queries, keys, rows: loop_lib.Rows) -> plan_lib.SparsityPlan:
  """Every layer's pattern (one layer at a time: O(b * heads * S^2) memory) as plans."""
  pattern = lambda qk: layer_pattern(*qk, rows.lengths, rows.limit,  # noqa: E731
                                     tile=config.sparsed_tile, select=config.sparsed_select)
  sel = jax.lax.map(pattern, (queries, keys))
  return _plans(sel, queries.shape[2], config.sparsed_tile, config.sparsed_select)


def _select_plan(rows_mask, new, old):
  """``new`` for the rows in ``rows_mask [b]``, else ``old`` (leaves [n_layers, b, ...])."""
  def pick(n, o):
    return jnp.where(rows_mask.reshape((1, -1) + (1,) * (n.ndim - 2)), n, o)

  return jax.tree.map(pick, new, old)


def forward(config, apply, state: loop_lib.LoopState, rows: loop_lib.Rows, full_forward):
  """One step: full attention for rows at ``t <= t_s`` (the ones at ``t_s`` also fix their
  pattern), the kept tiles for the others. ``-> (block logits, pattern, positions [b])``."""
  t, t_s = state.nfe_denoise, switch_step(config)
  dense = t <= t_s
  probe = dense & (t == t_s) & ~state.done

  def probing_apply(*a, **kw):
    (z, kv), found = apply(*a, mutable=["intermediates"], **kw)
    return z, (kv, _layer_queries(found["intermediates"], config.model.n_layers))

  def with_probe(plan):
    logits, (kv, queries) = full_forward(config, probing_apply, state, rows)
    return logits, _select_plan(probe, patterns(config, queries, kv[0], rows), plan)

  def full(plan):
    plain = lambda p: (full_forward(config, apply, state, rows)[0], p)  # noqa: E731
    return jax.lax.cond(jnp.any(probe), with_probe, plain, plan)

  def sparse(plan):
    under_plan = lambda *a, **kw: apply(*a, plan=plan, **kw)  # noqa: E731
    return full_forward(config, under_plan, state, rows)[0], plan

  logits, plan = loop_lib.split_forward(config, state, dense, full, sparse, state.cache)
  return logits, plan, rows.limit


def density(config, plan: plan_lib.SparsityPlan, rows: loop_lib.Rows):
  """``[b]`` kept share of each row's (query tile, key tile) pairs, over layers and heads,
  counting only tiles inside the row's budget (1 where no pattern was fixed)."""
  n_row = -(-rows.limit // config.sparsed_tile)
  n = plan.kv_count.shape[-1]
  valid = jnp.arange(n)[None, :] < n_row[:, None]  # [b, nq]
  kept = jnp.sum(jnp.where(valid[None, :, None, :], plan.kv_count, 0), axis=(0, 2, 3))
  total = plan.kv_count.shape[0] * plan.kv_count.shape[2] * n_row * n_row
  return jnp.where(kept == 0, 1.0, kept / total)
