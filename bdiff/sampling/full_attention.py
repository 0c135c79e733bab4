"""Semi-autoregressive decoding of full-attention diffusion LMs, exact or with approximate caches.

Full-attention masked diffusion models (LLaDA: Nie et al., arXiv 2502.09992, ML-GSAI/LLaDA;
Dream: Ye et al., arXiv 2508.15487, HKUNLP/Dream; an MDLM trained with one block over the whole
sequence) attend bidirectionally over prompt and generation. LLaDA decodes them
*semi-autoregressively*: the generation is cut into blocks of ``sample.block_size`` positions
counted from the prompt's end; the active block is denoised until full while every later block
stays [MASK] (the strategy commits inside the active block only), then the next block starts.
``block_size=0`` is one block for the whole generation, as Dream and MDLM decode.

The canvas of a row is its prompt followed by ``max_new_tokens`` positions (row-local positions,
prompts right-padded as everywhere in the sampler). Keys past a row's limit ``P +
max_new_tokens`` (padding of a shorter prompt, the shape's tail) are invisible to every query
(segment ids), so a row decodes the same alone or in any batch.

``sample.cache`` picks what each step recomputes:

* ``none`` (the exact reference, LLaDA's ``generate``): every step forwards the whole canvas.
* ``prefix`` (Fast-dLLM v1 prefix cache: Wu et al., arXiv 2505.22618, NVlabs/Fast-dLLM
  ``generate_with_prefix_cache``): at a block's first step one full forward, whose keys/values
  of every position before the block are kept; the block's later steps query the block and
  everything after it against that stale prefix.
* ``dual`` (Fast-dLLM v1 dual cache, ``generate_with_dual_cache``): the same full forward also
  keeps the K/V of the positions after the block; later steps query the block only, attending
  to fresh block K/V and the stale prefix and suffix.
* ``dcd_prefix`` / ``dcd_dual`` (DCD, arXiv 2601.02076): the ``dcd`` strategy's sliding window
  with a cache refreshed by decoded count: ``bdiff.sampling.dcd_cache``.
* ``dkv`` (dKV-Cache, delayed caching) and ``window_block`` (Window-Diffusion's
  active/buffer/far-field partition on the semi-AR block): ``bdiff.sampling.approx_cache``.
* ``window`` (Window-Diffusion with its sliding active set) and ``dkv_greedy`` (dKV-Cache
  Greedy): cached steps query a per-step set of positions, ``bdiff.sampling.query_cache``.
* ``elastic`` (Elastic-Cache: per-layer caches, an attention-drift test per layer and a
  depth-aware refresh, deciding in a sliding window of masks): ``bdiff.sampling.elastic_cache``.

``sample.cache_refresh = k > 0`` also repeats the full forward every ``k`` steps inside a block
(the reference refreshes only at block starts, ``k = 0``; ``k = 1`` recomputes every step and
equals ``none``). Both caches are approximations: the cached K/V were computed while the block
still held [MASK]. Their drift from ``none`` is measured by ``bdiff.sampling.drift``.

AdaBlock (``sample.strategy="adablock"``: Lu et al., arXiv 2509.26432, lgxi24/AdaBlock-dLLM)
chooses each block's length at its first step, per row, from the most confident delimiter
proposal (``strategies.adablock_block_length``), within ``[1, block_size]``: ``block_size`` is
then the longest block (the static window) and the active block ends at ``blk_start +
blk_len``. The ``dual`` cache takes the keys past that end from the cache.

SparseD (``sample.sparse_attention="sparsed"``, with ``cache="none"``: Wang et al., arXiv
2509.24014, INV-WZQ/SparseD) attends fully for the first steps, then through per-layer,
per-head block-sparse patterns fixed once: ``bdiff.sampling.sparsed``.

Token-shifted models (Dream: the logits at ``i - 1`` predict ``i``): a cached forward also
queries the position just before the block, so every block position gets a fresh prediction.
(Fast-dLLM's Dream code instead commits the block's first token from the block-start forward.)

Fixed shapes: under threshold rules rows reach block starts at different iterations, so an
iteration runs the full forward for the rows that refresh and the cached forward for the
others, each under ``lax.cond`` (skipped when no row needs it); a row's logits never depend on
which other rows refreshed. ``positions_computed`` counts, per row, the canvas positions
(up to its limit) its forwards recomputed.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from bdiff import masks as masks_lib
from bdiff.sampling import approx_cache
from bdiff.sampling import cache as cache_lib
from bdiff.sampling import dcd_cache
from bdiff.sampling import elastic_cache
from bdiff.sampling import loop as loop_lib
from bdiff.sampling import query_cache
from bdiff.sampling import sparsed
from bdiff.sampling import strategies as strategies_lib
from bdiff.sampling.loop import LoopState, Rows, SamplerConfig


def _init(config: SamplerConfig, prompts, rows: Rows, trace: bool) -> LoopState:
  """The canvas (prompt, then [MASK]) with room for whole blocks past every row's budget."""
  bsz, width = prompts.shape
  blk = config.block_size
  # A block's window is never clipped: whole blocks fit past the widest budget, or, when
  # lengths vary (AdaBlock), a full window from the budget's last position.
  room = -(-config.max_new_tokens // blk) * blk
  length = width + (config.max_new_tokens + blk if config.adaptive_blocks else room)
  pos = jnp.arange(length, dtype=jnp.int32)[None, :]
  padded = jnp.pad(prompts.astype(jnp.int32), ((0, 0), (0, length - width)))
  zeros = jnp.zeros((bsz,), jnp.int32)
  cache = None
  if config.cache_mode != "none":
    cache = cache_lib.init_cache(config.model, bsz, length)
  if config.cache_mode in dcd_cache.MODES:  # DCD: K/V and per-row refresh counters
    cache = dcd_cache.init_cache(config, bsz, length)
  if config.cache_mode in approx_cache.MODES:
    cache = approx_cache.init_cache(config, bsz, length)
  if config.cache_mode in query_cache.MODES:
    cache = query_cache.init_cache(config, bsz, length)
  if config.sparse_attention == "sparsed":  # SparseD's pattern rides in the cache slot
    cache = sparsed.init_state(config, bsz, length)
  if config.cache_mode in elastic_cache.MODES:
    cache = elastic_cache.init_cache(config, bsz, length)
  state = LoopState(
      tokens=jnp.where(pos < rows.lengths[:, None], padded, config.mask_id),
      blk_start=rows.lengths, step_in_blk=zeros, needs_commit=jnp.zeros((bsz,), bool),
      done=jnp.zeros((bsz,), bool), stop_pos=jnp.full((bsz,), length, jnp.int32),
      nfe_denoise=zeros, nfe_commit=zeros, positions=zeros,
      prev_logits=jnp.zeros((bsz, 0), jnp.float32), cache=cache,
      strat=strategies_lib.init_state(config.strategy, bsz, blk),
      it=jnp.zeros((), jnp.int32), trace=None)
  if config.adaptive_blocks:
    state = state._replace(blk_len=jnp.full((bsz,), blk, jnp.int32),
                           blk_log=jnp.zeros((bsz, config.max_new_tokens), jnp.int32))
  return loop_lib.init_trace(config, state, length) if trace else state


def _predictors(config: SamplerConfig, state: LoopState) -> jax.Array:
  """``[b]`` first position whose logits predict the active block (one earlier if shifted)."""
  return state.blk_start - int(config.token_shift)


def _full_forward(config: SamplerConfig, apply, state: LoopState, rows: Rows):
  """The whole canvas, full attention over the row's valid keys: ``(block logits, K/V)``."""
  bsz, length = state.tokens.shape
  pos = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (bsz, length))
  seg = (jnp.ones((bsz, length), jnp.int32), (pos < rows.limit[:, None]).astype(jnp.int32))
  z, kv = apply(state.tokens, pos, masks_lib.full(length, length), segment_ids=seg,
                return_kv=True)
  return cache_lib.gather_windows(z, _predictors(config, state), config.block_size), kv


def _query_width(config: SamplerConfig) -> int:
  """Queries of a cached forward: the block and everything after it (prefix) or the block
  (dual), plus the predicting position of a shifted model."""
  span = config.max_new_tokens if config.cache_mode == "prefix" else config.block_size
  return span + int(config.token_shift)


def _cached_forward(config: SamplerConfig, apply, state: LoopState, rows: Rows):
  """Query the active block (and, prefix, what follows) against the stale cached K/V."""
  length = state.tokens.shape[1]
  width = _query_width(config)
  start = _predictors(config, state)
  win = cache_lib.gather_windows(state.tokens, start, width)
  pos = start[:, None] + jnp.arange(width, dtype=jnp.int32)[None, :]
  slot = jnp.arange(length, dtype=jnp.int32)[None, :]
  stale = slot < start[:, None]  # cached prefix; queried positions use their fresh K/V
  fresh_end = rows.limit
  if config.cache_mode == "dual":
    block_end = loop_lib.block_end(config, state)
    stale |= (slot >= block_end[:, None]) & (slot < rows.limit[:, None])
    # A runtime-length block (AdaBlock) ends inside the window: past it, the stale copy.
    fresh_end = jnp.minimum(fresh_end, block_end)
  kv_seg = jnp.concatenate([stale, pos < fresh_end[:, None]], axis=1).astype(jnp.int32)
  seg = (jnp.ones(win.shape, jnp.int32), kv_seg)
  z = apply(win, pos, masks_lib.full(width, length + width), cache=state.cache,
            segment_ids=seg)
  return z[:, :config.block_size]


def _cached_positions(config: SamplerConfig, state: LoopState, rows: Rows) -> jax.Array:
  end = state.blk_start + config.block_size if config.cache_mode == "dual" else rows.limit
  return jnp.minimum(end, rows.limit) - _predictors(config, state)


def _refreshing(config: SamplerConfig, state: LoopState) -> jax.Array:
  """``[b]`` rows whose forward this step is the full one that (re)builds their cache."""
  first = state.step_in_blk == 0
  if config.cache_refresh:
    return first | (state.step_in_blk % config.cache_refresh == 0)
  return first


def _forward(config: SamplerConfig, apply, state: LoopState, rows: Rows):
  """One step's forward(s): ``(block logits [b, B, V], cache, positions computed [b])``."""
  if config.sparse_attention == "sparsed":  # SparseD: full, then per-head sparse attention
    return sparsed.forward(config, apply, state, rows, _full_forward)
  if config.cache_mode == "none":
    return _full_forward(config, apply, state, rows)[0], None, rows.limit
  if config.cache_mode in dcd_cache.MODES:  # DCD's sliding-window cache
    return dcd_cache.forward(config, apply, state, rows, _full_forward)
  if config.cache_mode in approx_cache.MODES:  # dKV-Cache, Window-Diffusion
    return approx_cache.forward(config, apply, state, rows, _full_forward)
  if config.cache_mode in query_cache.MODES:  # Window-Diffusion (sliding), dKV-Cache Greedy
    return query_cache.forward(config, apply, state, rows, _full_forward)
  refresh = _refreshing(config, state)

  def full(cache):
    logits, kv = _full_forward(config, apply, state, rows)
    return logits, loop_lib.select_rows(refresh & ~state.done, kv, cache)

  logits, cache = loop_lib.split_forward(
      config, state, refresh, full,
      lambda c: (_cached_forward(config, apply, state, rows), c), state.cache)
  positions = jnp.where(refresh, rows.limit, _cached_positions(config, state, rows))
  return logits, cache, positions


def _choose_block(config: SamplerConfig, state: LoopState, rows: Rows, logits) -> LoopState:
  """AdaBlock (Lu et al., "AdaBlock-dLLM", arXiv 2509.26432; lgxi24/AdaBlock-dLLM
  ``generate_adablock.py``): at a block's first step, the block's length from the most
  confident delimiter among that step's proposals (drawn with the step's own keys, so they
  are the tokens the step commits), in ``[1, block_size]``; recorded in ``blk_log``."""
  if not config.adaptive_blocks:
    return state
  fresh = (state.step_in_blk == 0) & ~state.done
  window = loop_lib.open_positions(config, state._replace(blk_len=None), rows)
  chosen = strategies_lib.adablock_block_length(
      config.strategy, logits, window, loop_lib.step_keys(state, rows),
      rows.limit - state.blk_start)
  at = (jnp.arange(config.max_new_tokens)[None, :]
        == (state.blk_start - rows.lengths)[:, None]) & fresh[:, None]
  return state._replace(blk_len=jnp.where(fresh, chosen, state.blk_len),
                        blk_log=jnp.where(at, chosen[:, None], state.blk_log))


def _advance(config: SamplerConfig, state: LoopState, rows: Rows) -> LoopState:
  """Rows whose block filled: done (stop token or budget) or on to the next block."""
  finished, advance = loop_lib.block_status(config, state, rows)
  return state._replace(
      done=state.done | finished,
      blk_start=jnp.where(advance, loop_lib.block_end(config, state), state.blk_start),
      step_in_blk=jnp.where(advance, 0, state.step_in_blk))


def generate_fn(params, prompts, rows: Rows, *, config: SamplerConfig,
                trace: bool = False) -> dict:
  """The un-jitted full-attention loop (``generate.generate`` dispatches here)."""
  apply = loop_lib.apply_fn(config, params)
  state = _init(config, prompts, rows, trace)

  def step(st: LoopState) -> LoopState:
    busy = ~st.done
    allowed = query_cache.allowed(config, st, rows)  # None, or window's active masks
    if config.cache_mode in elastic_cache.MODES:  # runs layer by layer: needs the params
      logits, cache, positions = elastic_cache.forward(config, params, st, rows)
    else:
      logits, cache, positions = _forward(config, apply, st, rows)
    st = _choose_block(config, st._replace(cache=cache), rows, logits)
    st = loop_lib.denoise(config, st, rows, logits, allowed)
    st = st._replace(positions=st.positions + jnp.where(busy, positions, 0))
    return _advance(config, st, rows)

  state = loop_lib.run_loop(config, state, state.tokens.shape[1], step)
  out = loop_lib.outputs(config, state, rows, 0)
  if config.sparse_attention == "sparsed":
    out["attention_density"] = sparsed.density(config, state.cache, rows)
  return out
