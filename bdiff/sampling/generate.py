"""One jit-compiled block-diffusion sampler with an exact KV cache.

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

``use_cache=False`` is the reference: every forward recomputes the whole buffer under the
training regime's mask (same schedule, no K/V stored); the exact cache must reproduce its
tokens.

Token-shifted models (``diffusion.token_shift``, Fast-dLLM v2): a position's logits come from
the position before it. In separate mode the block's first position is predicted by the
previous block's commit pass (kept in the carry); with ``first_token_from_commit`` that
prediction's argmax is committed right away, as Fast-dLLM v2 does (also from the prefill's last
logit when ``P % B == 0``). The option has no meaning for unshifted models (their commit pass
re-predicts known tokens) and the config rejects it there.
"""
from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections

from bdiff import sharding as sharding_lib
from bdiff.models import make_model, mask_token_id
from bdiff.sampling import cache as cache_lib
from bdiff.sampling import config as config_lib
from bdiff.sampling import strategies as strategies_lib
from bdiff.sampling import window_masks

NO_TOKEN = -1  # fills output slots past a row's end (after its stop token or budget)


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
  """Everything static about a sampler (hashable: a ``jit`` static argument).

  Build it with :meth:`from_config` from a full bdiff config; direct construction is for
  tests and experiments.
  """
  model: Any                          # the model section (FrozenConfigDict)
  strategy: strategies_lib.StrategyConfig
  block_size: int
  max_new_tokens: int
  use_cache: bool = True
  commit: str = "separate"            # config.COMMIT_MODES
  token_shift: bool = False
  first_token_from_commit: bool = False
  stop_ids: tuple[int, ...] = ()
  context_causal: bool = False        # the model's clean stream is token-causal (NBDiff-style)
  prefill_chunk: int = 256            # prompt positions per prefill forward (whole blocks)

  @property
  def mask_id(self) -> int:
    return mask_token_id(self.model)

  @property
  def fused(self) -> bool:
    return self.commit == "fused"

  @classmethod
  def from_config(cls, cfg, eos_id: int | None = None) -> SamplerConfig:
    """From a full bdiff config (``model``, ``diffusion``, ``sample``) that has been validated.

    Validation happens once, in ``bdiff.sampling.config.validate_sample_config`` (called by
    ``bdiff.config.validate`` and ``bdiff.runs.Sampler``); this only converts.
    """
    s, d = cfg.sample, cfg.diffusion
    if cfg.model.get("attention", "block_causal") != "block_causal":
      raise ValueError(
          f"model.attention={cfg.model.attention!r}: the sampler decodes block-causally (KV "
          "cache of finished blocks), not the checkpoint's own bidirectional regime; set "
          "--config.model.attention=block_causal to decode it that way anyway")
    block = d.block_size
    stop = (eos_id,) if (s.stop_at_eos and eos_id is not None) else ()
    return cls(model=ml_collections.FrozenConfigDict(cfg.model),
               strategy=config_lib.strategy_config(s, block), block_size=block,
               max_new_tokens=s.max_new_tokens, use_cache=s.use_cache, commit=s.commit,
               token_shift=d.token_shift, first_token_from_commit=s.first_token_from_commit,
               stop_ids=stop, context_causal=d.context_causal,
               prefill_chunk=config_lib.prefill_chunk(s, block))

  def max_iterations(self, length: int) -> int:
    """Loop bound: per block at most ``max(B, steps)`` denoising steps plus one commit."""
    per_block = max(self.block_size, self.strategy.steps) + 1
    return (length // self.block_size) * per_block + 1


class Rows(NamedTuple):
  """Per-row constants of one call."""
  lengths: jax.Array    # [b] int32 prompt lengths P
  limit: jax.Array      # [b] int32 P + max_new_tokens
  row_ids: jax.Array    # [b] int32 example ids (RNG streams)
  rng: jax.Array        # base PRNG key


class LoopState(NamedTuple):
  """The ``while_loop`` carry: per-row buffers and counters, the cache, strategy state."""
  tokens: jax.Array        # [b, L] int32 row buffers; MASK where unknown
  blk_start: jax.Array     # [b] int32 active block start (multiple of B)
  step_in_blk: jax.Array   # [b] int32 denoising steps taken in the active block
  needs_commit: jax.Array  # [b] bool block complete, K/V not yet written
  done: jax.Array          # [b] bool
  stop_pos: jax.Array      # [b] int32 first committed stop token (L if none)
  nfe_denoise: jax.Array   # [b] int32
  nfe_commit: jax.Array    # [b] int32
  prev_logits: jax.Array   # [b, V] raw logits predicting blk_start (shifted models) or [b, 0]
  cache: Any               # (k, v) [n_layers, b, L, kv_heads, head_dim], or None
  strat: dict              # strategy state
  it: jax.Array            # scalar int32 iterations (forwards after prefill)
  trace: Any               # [T, b, L] token buffers per iteration (debug), or None


def _apply_fn(config: SamplerConfig, params):
  model = make_model(config.model)
  return lambda *a, **kw: model.apply({"params": params}, *a, **kw)


def _block_positions(state: LoopState, block: int) -> jax.Array:
  return state.blk_start[:, None] + jnp.arange(block, dtype=jnp.int32)[None, :]


def _open(config: SamplerConfig, state: LoopState, rows: Rows) -> jax.Array:
  """``[b, B]`` positions of the active block still to be filled (MASK, in budget, pre-stop)."""
  pos = _block_positions(state, config.block_size)
  win = cache_lib.gather_windows(state.tokens, state.blk_start, config.block_size)
  return ((win == config.mask_id) & (pos < rows.limit[:, None])
          & (pos < state.stop_pos[:, None]))


def _first_stop(config: SamplerConfig, commit: jax.Array, values: jax.Array,
                pos: jax.Array, stop_pos: jax.Array) -> jax.Array:
  if not config.stop_ids:
    return stop_pos
  hit = commit & jnp.isin(values, jnp.asarray(config.stop_ids, jnp.int32))
  return jnp.minimum(stop_pos, jnp.min(jnp.where(hit, pos, stop_pos[:, None]), axis=-1))


def _put_token(config, state: LoopState, rows: Rows, logits: jax.Array, pos: jax.Array,
               rows_mask: jax.Array) -> LoopState:
  """Commit ``argmax(logits)`` at per-row ``pos`` where ``rows_mask`` (the shifted harvest)."""
  ok = rows_mask & (pos < rows.limit) & (pos < state.stop_pos)
  tok = jnp.argmax(logits, axis=-1).astype(jnp.int32)
  tokens = cache_lib.update_windows(state.tokens, tok[:, None], pos, ok)
  stop = _first_stop(config, ok[:, None], tok[:, None], pos[:, None], state.stop_pos)
  return state._replace(tokens=tokens, stop_pos=stop)


def _settle(config: SamplerConfig, state: LoopState, rows: Rows) -> LoopState:
  """Close complete blocks: finish the row, or queue the commit (separate) / advance (fused)."""
  b = config.block_size
  complete = ~state.done & ~state.needs_commit & ~jnp.any(_open(config, state, rows), -1)
  end = state.blk_start + b
  finished = complete & ((state.stop_pos < end) | (end >= rows.limit))
  advance = complete & ~finished
  state = state._replace(done=state.done | finished,
                         needs_commit=state.needs_commit | advance)
  if config.fused:  # the next forward already queries the new block
    state = state._replace(blk_start=jnp.where(advance, end, state.blk_start),
                           step_in_blk=jnp.where(advance, 0, state.step_in_blk))
  return state


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
  clean_width = width // blk * blk
  if config.use_cache:
    cache = cache_lib.init_cache(config.model, bsz, length)
    if clean_width:
      cache, last = cache_lib.prefill(
          apply, tokens[:, :clean_width], cache, start, blk, chunk=config.prefill_chunk,
          vocab_size=config.model.vocab_size, context_causal=config.context_causal)
      nfe_prefill = cache_lib.prefill_forwards(clean_width, config.prefill_chunk)
  elif config.first_token_from_commit and clean_width:
    logits = apply(tokens, jnp.broadcast_to(pos, tokens.shape),
                   window_masks.reference_mask(length, blk, start, config.context_causal))
    last = cache_lib.gather_windows(logits, jnp.maximum(start - 1, 0), 1)[:, 0]
    nfe_prefill = 1
  if config.token_shift and nfe_prefill:
    prev = last
  elif config.token_shift and not config.fused:
    prev = jnp.zeros((bsz, config.model.vocab_size), jnp.float32)
  zeros = jnp.zeros((bsz,), jnp.int32)
  state = LoopState(
      tokens=tokens, blk_start=start, step_in_blk=zeros,
      needs_commit=jnp.zeros((bsz,), bool), done=jnp.zeros((bsz,), bool),
      stop_pos=jnp.full((bsz,), length, jnp.int32), nfe_denoise=zeros, nfe_commit=zeros,
      prev_logits=prev, cache=cache,
      strat=strategies_lib.init_state(config.strategy, bsz, blk),
      it=jnp.zeros((), jnp.int32), trace=None)
  if config.first_token_from_commit and nfe_prefill:
    state = _put_token(config, state, rows, prev, start, rows.lengths % blk == 0)
  if trace:
    rec = jnp.full((config.max_iterations(length) + 1, bsz, length), NO_TOKEN, jnp.int32)
    state = state._replace(trace=rec.at[0].set(state.tokens))
  return _settle(config, state, rows), nfe_prefill


def _forward(config: SamplerConfig, apply, state: LoopState):
  """One forward: ``(block logits [b, B, V] ready for select, raw last logit [b, V], K/V)``."""
  blk = config.block_size
  committing = state.needs_commit & ~state.done & (not config.fused)
  if not config.use_cache:
    bsz, length = state.tokens.shape
    pos = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (bsz, length))
    # Clean context ends at the active block, or after it for a row's commit pass.
    clean_end = state.blk_start + jnp.where(committing, blk, 0)
    z = apply(state.tokens, pos,
              window_masks.reference_mask(length, blk, clean_end, config.context_causal))
    zs = jnp.concatenate([z[:, :1], z[:, :-1]], axis=1) if config.token_shift else z
    last = cache_lib.gather_windows(z, state.blk_start + blk - 1, 1)[:, 0]
    return cache_lib.gather_windows(zs, state.blk_start, blk), last, None
  width = 2 * blk if config.fused else blk
  ws = state.blk_start - (blk if config.fused else 0)
  win = cache_lib.gather_windows(state.tokens, ws, width)
  pos = ws[:, None] + jnp.arange(width, dtype=jnp.int32)[None, :]
  length = state.tokens.shape[1]
  mask = window_masks.loop_mask(width, length, blk, context_causal=config.context_causal,
                                fused=config.fused, committing=committing)
  z, kv = apply(win, pos, mask, cache=state.cache,
                segment_ids=cache_lib.window_segments(ws, length, width), return_kv=True)
  current = z[:, width - blk:]
  if not config.token_shift:
    block = current
  elif config.fused:
    block = z[:, blk - 1:width - 1]
  else:
    block = jnp.concatenate([state.prev_logits[:, None], current[:, :-1]], axis=1)
  return block, current[:, -1], kv


def _denoise(config: SamplerConfig, state: LoopState, rows: Rows, logits) -> LoopState:
  """One strategy step for the rows that are denoising (commit/stop bookkeeping per row)."""
  active = ~state.done if config.fused else ~state.done & ~state.needs_commit
  masked = _open(config, state, rows) & active[:, None]
  keys = jax.vmap(lambda u, n: jax.random.fold_in(jax.random.fold_in(rows.rng, u), n))(
      rows.row_ids, state.nfe_denoise)
  commit, values, strat = strategies_lib.select(config.strategy, logits, masked, keys,
                                                state.step_in_blk, state.strat)
  commit = commit & masked
  win = cache_lib.gather_windows(state.tokens, state.blk_start, config.block_size)
  tokens = cache_lib.update_windows(state.tokens, jnp.where(commit, values, win),
                                    state.blk_start, active)
  pos = _block_positions(state, config.block_size)
  keep = lambda new, old: jnp.where(  # noqa: E731
      active.reshape(active.shape + (1,) * (new.ndim - 1)), new, old)
  inc = active.astype(jnp.int32)
  return state._replace(
      tokens=tokens, stop_pos=_first_stop(config, commit, values, pos, state.stop_pos),
      strat=jax.tree.map(keep, strat, state.strat), nfe_denoise=state.nfe_denoise + inc,
      step_in_blk=state.step_in_blk + inc)


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


def _outputs(config: SamplerConfig, state: LoopState, rows: Rows, nfe_prefill: int) -> dict:
  g = config.max_new_tokens
  idx = rows.lengths[:, None] + jnp.arange(g, dtype=jnp.int32)[None, :]
  gen = jnp.take_along_axis(state.tokens, jnp.minimum(idx, state.tokens.shape[1] - 1), axis=1)
  count = jnp.minimum(state.stop_pos + 1, rows.limit) - rows.lengths
  gen = jnp.where(jnp.arange(g)[None, :] < count[:, None], gen, NO_TOKEN)
  forwards = state.nfe_denoise + state.nfe_commit
  out = dict(tokens=gen, num_tokens=count, nfe_denoise=state.nfe_denoise,
             nfe_commit=state.nfe_commit, nfe_prefill=jnp.asarray(nfe_prefill, jnp.int32),
             tokens_per_forward=count / jnp.maximum(forwards, 1), done=state.done,
             iterations=state.it)
  if state.trace is not None:
    out["trace"] = state.trace
  return out


def generate_fn(params, prompts, rng, lengths, row_ids, *, config: SamplerConfig,
                trace: bool = False) -> dict:
  """The un-jitted sampler (see :func:`generate`; ``jit`` it with ``config`` static)."""
  apply = _apply_fn(config, params)
  rows = Rows(lengths.astype(jnp.int32), (lengths + config.max_new_tokens).astype(jnp.int32),
              row_ids.astype(jnp.int32), rng)
  state, nfe_prefill = _init(config, apply, prompts, rows, trace)
  max_it = config.max_iterations(state.tokens.shape[1])

  def cond(st: LoopState):
    return jnp.any(~st.done) & (st.it < max_it)

  def body(st: LoopState):
    logits, last, kv = _forward(config, apply, st)
    st = _denoise(config, st, rows, logits)
    st = _commit(config, st, rows, last, kv)
    st = _settle(config, st, rows)._replace(it=st.it + 1)
    if st.trace is not None:
      st = st._replace(trace=st.trace.at[st.it].set(st.tokens))
    return st

  state = jax.lax.while_loop(cond, body, state)
  return _outputs(config, state, rows, nfe_prefill)


def initial_state(params, prompts, rng, lengths, row_ids, *, config: SamplerConfig
                  ) -> LoopState:
  """The loop's carry after prefill (benchmarks time one forward from it)."""
  apply = _apply_fn(config, params)
  rows = Rows(lengths, lengths + config.max_new_tokens, row_ids, rng)
  return _init(config, apply, prompts, rows, False)[0]


def loop_forward(params, state: LoopState, *, config: SamplerConfig):
  """One loop forward from ``state``, as the loop runs it.

  Returns ``(block logits [b, B, V], raw last logit [b, V], new K/V or None)``.
  """
  return _forward(config, _apply_fn(config, params), state)


_generate_jit = jax.jit(generate_fn, static_argnames=("config", "trace"))


def _defaults(prompts, lengths, row_ids):
  b, width = prompts.shape
  lengths = jnp.full((b,), width, jnp.int32) if lengths is None else jnp.asarray(lengths)
  row_ids = jnp.arange(b, dtype=jnp.int32) if row_ids is None else jnp.asarray(row_ids)
  return lengths, row_ids


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
    per chunk), ``tokens_per_forward [b]`` (``num_tokens / (nfe_denoise + nfe_commit)``), ``done [b]``,
    ``iterations`` (loop forwards).
  """
  lengths, row_ids = _defaults(prompts, lengths, row_ids)
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
             tokens_per_forward=rows, done=rows, iterations=rep)
  fn = lambda p, x, r, n, u: generate_fn(p, x, r, n, u, config=config)  # noqa: E731
  return jax.jit(fn, in_shardings=(params_sh, rows, rep, rows, rows), out_shardings=out)
