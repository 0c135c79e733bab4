"""One jit-compiled block-diffusion sampler with an exact KV cache (and the sampler's entry).

``generate``/``generate_fn`` serve every model: block-causal ones run the block loop of this
module; full-attention ones (``model.attention="bidirectional"``) the semi-autoregressive loop
of ``full_attention``. The pieces both loops share are in ``loop``.

``generate(params, prompts, rng, config, lengths, row_ids)`` is a pure function: a
``lax.while_loop`` in which one iteration is one network forward for the whole batch. Rows
advance independently (no lockstep): in an iteration each row either takes a denoising step
of its active block or, in the default ``commit="separate"`` mode, runs the *commit pass* of
its finished block, i.e. re-forwards the clean block against the cache and writes its K/V
exactly once, as BD3-LM (Arriola et al., ICLR 2025, kuleshov-group/bd3lms), SDAR and
Fast-dLLM v2 (Wu et al., 2025) do. Both kinds are the same forward of a ``B``-wide window, so
one call serves the mixed batch. ``commit="fused"`` folds the commit into the next block's
denoising forward instead (query = ``[previous block ; current block]``): no separate pass,
twice the query width. docs/sampling.md explains the design.

Attention regime: the prefill and the commit pass compute clean K/V the way the model's clean
stream was trained, block-causal (BD3-LM) or token-causal (``diffusion.context_causal``); the
denoising forwards are the same for both (see ``window_masks``).

Layout: row buffers ``[b, L]`` in *row-local* positions: position 0 is the row's first prompt
token (prompts come right-padded with their ``lengths``), so a row's blocks count from its own
first token and its prompt tail shares the first generated block (prefill stores the prompt's
``P // B`` whole blocks, ``prefill_chunk`` positions per forward). ``L = ceil((P +
max_new_tokens) / B) * B``. Generated positions hold [MASK] until committed; positions at or
past ``P + max_new_tokens`` are never candidates.

Determinism: a row's step keys are ``fold_in(fold_in(rng, row_id), n)`` with ``n`` the row's
own denoising-step count, and nothing is pooled across rows, so a row decodes the same alone or
in any batch (same ``row_id``).

``sample.cache="none"`` (formerly ``use_cache=False``, still accepted) is the reference: every
forward recomputes the whole buffer under the training regime's mask (same schedule, no K/V
stored); the exact cache (``"exact"``, the default) must reproduce its tokens.
``sample.cache="flashblock"`` (FlashBlock attention caching: approximate, never the default)
runs this loop on the same exact cache but reuses, at a block's later steps, each layer's
attention over the cache from the block's first step: ``bdiff.sampling.flashblock``.

Token-shifted models (``diffusion.token_shift``, Fast-dLLM v2): a position's logits come from
the position before it. In separate mode the block's first position is predicted by the
previous block's commit pass (kept in the carry); with ``first_token_from_commit`` that
prediction's argmax is committed right away, as Fast-dLLM v2 does (also from the prefill's last
logit when ``P % B == 0``). The option has no meaning for unshifted models (their commit pass
re-predicts known tokens) and the config rejects it there.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from bdiff import sharding as sharding_lib
from bdiff.sampling import cache as cache_lib
from bdiff.sampling import flashblock
from bdiff.sampling import full_attention
from bdiff.sampling import loop as loop_lib
from bdiff.sampling import strategies as strategies_lib
from bdiff.sampling import window_masks

# The pieces both loops share live in ``loop``; re-exported here, where callers look for them.
NO_TOKEN = loop_lib.NO_TOKEN
SamplerConfig = loop_lib.SamplerConfig
LoopState = loop_lib.LoopState
Rows = loop_lib.Rows


def _put_token(config, state: LoopState, rows: Rows, logits: jax.Array, pos: jax.Array,
               rows_mask: jax.Array) -> LoopState:
  """Commit ``argmax(logits)`` at per-row ``pos`` where ``rows_mask`` (the shifted harvest)."""
  ok = rows_mask & (pos < rows.limit) & (pos < state.stop_pos)
  tok = jnp.argmax(logits, axis=-1).astype(jnp.int32)
  tokens = cache_lib.update_windows(state.tokens, tok[:, None], pos, ok)
  stop = loop_lib.first_stop(config, ok[:, None], tok[:, None], pos[:, None], state.stop_pos)
  return state._replace(tokens=tokens, stop_pos=stop)


def _settle(config: SamplerConfig, state: LoopState, rows: Rows) -> LoopState:
  """Close complete blocks: finish the row, or queue the commit (separate) / advance (fused)."""
  finished, advance = loop_lib.block_status(config, state, rows)
  state = state._replace(done=state.done | finished,
                         needs_commit=state.needs_commit | advance)
  if config.fused:  # the next forward already queries the new block
    state = state._replace(blk_start=jnp.where(advance, state.blk_start + config.block_size,
                                               state.blk_start),
                           step_in_blk=jnp.where(advance, 0, state.step_in_blk))
  return state


def _exact(config: SamplerConfig) -> bool:
  """The loop runs on the exact KV cache of clean blocks (FlashBlock caches on top of it)."""
  return config.cache_mode in ("exact", flashblock.MODE)


def _forward_positions(config: SamplerConfig, rows: Rows) -> jax.Array:
  """Positions of a row's canvas one loop forward computes: its query window with the cache,
  its whole buffer (up to its budget) without."""
  if _exact(config):
    return jnp.full_like(rows.limit, 2 * config.block_size if config.fused
                         else config.block_size)
  return rows.limit


def _init(config: SamplerConfig, apply, prompts, rows: Rows, trace: bool):
  """Row buffers, prefill of whole prompt blocks, the shifted first-token harvest."""
  bsz, width = prompts.shape
  blk = config.block_size
  length = -(-(width + config.max_new_tokens) // blk) * blk
  pos = jnp.arange(length, dtype=jnp.int32)[None, :]
  padded = jnp.pad(prompts.astype(jnp.int32), ((0, 0), (0, length - width)))
  tokens = jnp.where(pos < rows.lengths[:, None], padded, config.mask_id)
  start = rows.lengths // blk * blk
  cache, prev, nfe_prefill = None, jnp.zeros((bsz, 0), jnp.float32), 0
  positions = jnp.zeros((bsz,), jnp.int32)
  clean_width = width // blk * blk
  if _exact(config):
    cache = cache_lib.init_cache(config.model, bsz, length)
    if clean_width:
      cache, last = cache_lib.prefill(
          apply, tokens[:, :clean_width], cache, start, blk, chunk=config.prefill_chunk,
          vocab_size=config.model.vocab_size, context_causal=config.context_causal)
      nfe_prefill = cache_lib.prefill_forwards(clean_width, config.prefill_chunk)
      positions = start
  elif config.first_token_from_commit and clean_width:
    logits = apply(tokens, jnp.broadcast_to(pos, tokens.shape),
                   window_masks.reference_mask(length, blk, start, config.context_causal))
    last = cache_lib.gather_windows(logits, jnp.maximum(start - 1, 0), 1)[:, 0]
    nfe_prefill, positions = 1, rows.limit
  if config.token_shift and nfe_prefill:
    prev = last
  elif config.token_shift and not config.fused:
    prev = jnp.zeros((bsz, config.model.vocab_size), jnp.float32)
  zeros = jnp.zeros((bsz,), jnp.int32)
  state = LoopState(
      tokens=tokens, blk_start=start, step_in_blk=zeros,
      needs_commit=jnp.zeros((bsz,), bool), done=jnp.zeros((bsz,), bool),
      stop_pos=jnp.full((bsz,), length, jnp.int32), nfe_denoise=zeros, nfe_commit=zeros,
      positions=positions, prev_logits=prev, cache=cache,
      strat=strategies_lib.init_state(config.strategy, bsz, blk),
      it=jnp.zeros((), jnp.int32), trace=None,
      attn_ext=flashblock.init_ext(config, bsz) if config.cache_mode == flashblock.MODE
      else None)
  if config.first_token_from_commit and nfe_prefill:
    state = _put_token(config, state, rows, prev, start, rows.lengths % blk == 0)
  if trace:
    state = loop_lib.init_trace(config, state, length)
  return _settle(config, state, rows), nfe_prefill


def _forward(config: SamplerConfig, apply, state: LoopState):
  """One forward: ``(block logits [b, B, V] ready for select, raw last logit [b, V], K/V)``."""
  blk = config.block_size
  committing = state.needs_commit & ~state.done & (not config.fused)
  if not _exact(config):
    bsz, length = state.tokens.shape
    pos = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (bsz, length))
    # Clean context ends at the active block, or after it for a row's commit pass.
    clean_end = state.blk_start + jnp.where(committing, blk, 0)
    z = apply(state.tokens, pos,
              window_masks.reference_mask(length, blk, clean_end, config.context_causal))
    zs = jnp.concatenate([z[:, :1], z[:, :-1]], axis=1) if config.token_shift else z
    last = cache_lib.gather_windows(z, state.blk_start + blk - 1, 1)[:, 0]
    return cache_lib.gather_windows(zs, state.blk_start, blk), last, None
  return _window_forward(config, apply, state)


def _window_forward(config: SamplerConfig, apply, state: LoopState, **model_kw):
  """The cached forward of the query window: ``(block logits, last logit, K/V, *extra)``.

  ``model_kw`` go to the model (FlashBlock's attention hook); the model's outputs past the
  K/V are returned after it.
  """
  blk = config.block_size
  committing = state.needs_commit & ~state.done & (not config.fused)
  width = 2 * blk if config.fused else blk
  ws = state.blk_start - (blk if config.fused else 0)
  win = cache_lib.gather_windows(state.tokens, ws, width)
  pos = ws[:, None] + jnp.arange(width, dtype=jnp.int32)[None, :]
  length = state.tokens.shape[1]
  mask = window_masks.loop_mask(width, length, blk, context_causal=config.context_causal,
                                fused=config.fused, committing=committing)
  z, kv, *extra = apply(win, pos, mask, cache=state.cache, return_kv=True,
                        segment_ids=cache_lib.window_segments(ws, length, width), **model_kw)
  current = z[:, width - blk:]
  if not config.token_shift:
    block = current
  elif config.fused:
    block = z[:, blk - 1:width - 1]
  else:
    block = jnp.concatenate([state.prev_logits[:, None], current[:, :-1]], axis=1)
  return (block, current[:, -1], kv, *extra)


def _commit(config: SamplerConfig, state: LoopState, rows: Rows, last, kv) -> LoopState:
  """Store finished blocks' K/V (rows with ``needs_commit``); separate mode also advances."""
  blk = config.block_size
  writing = state.needs_commit & ~state.done
  if config.fused:
    cache = state.cache
    if cache is not None:
      prev_kv = tuple(x[:, :, :blk] for x in kv)
      cache = cache_lib.write_blocks(cache, prev_kv, state.blk_start - blk, writing)
    return state._replace(cache=cache, needs_commit=state.needs_commit & ~writing)
  if state.cache is not None:
    state = state._replace(cache=cache_lib.write_blocks(state.cache, kv, state.blk_start,
                                                        writing))
  nxt = state.blk_start + blk
  if config.token_shift:
    state = state._replace(prev_logits=jnp.where(writing[:, None], last, state.prev_logits))
  if config.first_token_from_commit:
    state = _put_token(config, state, rows, last, nxt, writing)
  return state._replace(
      blk_start=jnp.where(writing, nxt, state.blk_start),
      step_in_blk=jnp.where(writing, 0, state.step_in_blk),
      needs_commit=state.needs_commit & ~writing,
      nfe_commit=state.nfe_commit + writing.astype(jnp.int32))


def _block_causal_fn(params, prompts, rng, rows: Rows, config: SamplerConfig,
                     trace: bool) -> dict:
  apply = loop_lib.apply_fn(config, params)
  state, nfe_prefill = _init(config, apply, prompts, rows, trace)
  per_forward = _forward_positions(config, rows)

  def step(st: LoopState) -> LoopState:
    busy = ~st.done
    if config.cache_mode == flashblock.MODE:
      logits, last, kv, st = flashblock.forward(config, apply, st, _window_forward)
    else:
      logits, last, kv = _forward(config, apply, st)
    st = loop_lib.denoise(config, st, rows, logits)
    st = _commit(config, st, rows, last, kv)
    st = st._replace(positions=st.positions + jnp.where(busy, per_forward, 0))
    return _settle(config, st, rows)

  state = loop_lib.run_loop(config, state, state.tokens.shape[1], step)
  return loop_lib.outputs(config, state, rows, nfe_prefill)


def generate_fn(params, prompts, rng, lengths, row_ids, *, config: SamplerConfig,
                trace: bool = False) -> dict:
  """The un-jitted sampler (see :func:`generate`; ``jit`` it with ``config`` static).

  Full-attention models (``config.full_attention``) run the semi-autoregressive loop of
  ``full_attention``; block-causal ones the block loop above.
  """
  rows = loop_lib.make_rows(config, lengths, row_ids, rng)
  if config.full_attention:
    return full_attention.generate_fn(params, prompts, rows, config=config, trace=trace)
  return _block_causal_fn(params, prompts, rng, rows, config, trace)


def _block_causal_only(config: SamplerConfig, what: str) -> None:
  if config.full_attention:
    raise ValueError(f"{what} steps the block-causal loop; this SamplerConfig is for a "
                     "full-attention model (model.attention='bidirectional')")


def initial_state(params, prompts, rng, lengths, row_ids, *, config: SamplerConfig
                  ) -> LoopState:
  """The block-causal loop's carry after prefill (benchmarks time one forward from it)."""
  _block_causal_only(config, "initial_state")
  apply = loop_lib.apply_fn(config, params)
  rows = loop_lib.make_rows(config, lengths, row_ids, rng)
  return _init(config, apply, prompts, rows, False)[0]


def loop_forward(params, state: LoopState, *, config: SamplerConfig):
  """One block-causal loop forward from ``state``, as the loop runs it (with the exact cache;
  FlashBlock's steps are ``flashblock.forward``).

  Returns ``(block logits [b, B, V], raw last logit [b, V], new K/V or None)``.
  """
  _block_causal_only(config, "loop_forward")
  return _forward(config, loop_lib.apply_fn(config, params), state)


_generate_jit = jax.jit(generate_fn, static_argnames=("config", "trace"))


def generate(params, prompts, rng, config: SamplerConfig, lengths=None, row_ids=None, *,
             trace: bool = False) -> dict:
  """Sample continuations of a batch of prompts (jit-compiled once per shape and config).

  Args:
    params: model parameters (the inner ``params`` dict, unboxed).
    prompts: ``[b, P]`` int32 right-padded prompt tokens (each ``lengths[r] >= 1``).
    rng: PRNG key.
    config: a :class:`SamplerConfig`.
    lengths: ``[b]`` int32 prompt lengths (default ``P``).
    row_ids: ``[b]`` int32 example ids keying each row's RNG (default ``arange(b)``).
    trace: also return ``trace [T, b, L]``, the row buffers after every forward (debug).

  Returns:
    A dict of arrays: ``tokens [b, max_new_tokens]`` (generated tokens, the stop token
    included, ``NO_TOKEN`` after the row's end), ``num_tokens [b]``, ``nfe_denoise [b]``,
    ``nfe_commit [b]`` (commit passes, counted apart), ``nfe_prefill`` (prefill forwards, one
    per chunk), ``tokens_per_forward [b]`` (``num_tokens / (nfe_denoise + nfe_commit)``),
    ``positions_computed [b]`` (positions of the row's canvas, up to its budget, that its
    forwards computed, prefill included: the work a cache saves), ``done [b]``,
    ``iterations`` (loop forwards).
  """
  lengths, row_ids = loop_lib.defaults(prompts, lengths, row_ids)
  return _generate_jit(params, jnp.asarray(prompts), rng, lengths, row_ids, config=config,
                       trace=trace)


def make_sharded_generate(config: SamplerConfig, mesh, param_shardings=None):
  """``jax.jit`` of the sampler with the batch split over the mesh's data axes.

  Args:
    config: the sampler config.
    mesh: a mesh from ``bdiff.sharding.make_mesh`` (rows over ``data`` x ``fsdp``).
    param_shardings: a sharding tree for the params (default: replicated).

  Returns:
    ``f(params, prompts, rng, lengths, row_ids) -> outputs`` (all arguments required; the
    batch must divide by the data x fsdp size).
  """
  rows = sharding_lib.batch_sharding(mesh)
  rep = sharding_lib.replicated(mesh)
  params_sh = rep if param_shardings is None else param_shardings
  out = dict(tokens=rows, num_tokens=rows, nfe_denoise=rows, nfe_commit=rows, nfe_prefill=rep,
             tokens_per_forward=rows, positions_computed=rows, done=rows, iterations=rep)
  if config.full_attention and config.sparse_attention == "sparsed":
    out["attention_density"] = rows  # SparseD's kept share of tiles, per row
  fn = lambda p, x, r, n, u: generate_fn(p, x, r, n, u, config=config)  # noqa: E731
  return jax.jit(fn, in_shardings=(params_sh, rows, rep, rows, rows), out_shardings=out)
