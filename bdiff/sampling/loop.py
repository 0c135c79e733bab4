"""What the two sampling loops share: the static config, the carry, one strategy step, outputs.

Two jit-compiled ``lax.while_loop`` samplers use these pieces:

* ``generate.py``: block-causal models (BD3-LM, SDAR, Fast-dLLM v2, AR as block 1), with the
  exact KV cache of clean blocks (``sample.cache="exact"``) or its no-cache reference
  (``"none"``);
* ``full_attention.py``: full-attention models (``model.attention="bidirectional"``: LLaDA,
  Dream, an MDLM) decoded semi-autoregressively in blocks of ``sample.block_size``, recomputing
  the whole canvas each step (``"none"``, exact) or with Fast-dLLM v1's approximate prefix /
  dual caches (``"prefix"``, ``"dual"``).

In both, one iteration is one network forward for the whole batch, rows advance independently
(each has its own active block, step count and stop position), and a row's step keys are
``fold_in(fold_in(rng, row_id), n)`` with ``n`` the row's own denoising-step count, so a row
decodes the same alone or in any batch (same ``row_id``).
"""
from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections

from bdiff.models import make_model, mask_token_id
from bdiff.sampling import cache as cache_lib
from bdiff.sampling import config as config_lib
from bdiff.sampling import strategies as strategies_lib

NO_TOKEN = -1  # fills output slots past a row's end (after its stop token or budget)


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
  """Everything static about a sampler (hashable: a ``jit`` static argument).

  Build it with :meth:`from_config` from a full bdiff config; direct construction is for
  tests and experiments. ``block_size`` is the decoding block: the trained one for
  block-causal models, ``sample.block_size`` (0 = the whole generation) for full-attention
  ones.
  """
  model: Any                          # the model section (FrozenConfigDict)
  strategy: strategies_lib.StrategyConfig
  block_size: int
  max_new_tokens: int
  use_cache: bool = True              # False: the old spelling of cache="none"
  cache: str = "auto"                 # config.CACHE_MODES
  cache_refresh: int = 0              # prefix/dual: also refresh every k steps in a block
  cache_delay: int = 0                # dcd_prefix/dcd_dual: DCD's delay w
  window_tokens: int = 64             # window: Window-Diffusion's key window in masks
  active_tokens: int = 16             # window: Window-Diffusion's active (queried) masks
  dkv_window_size: int = 4            # dkv_greedy: masked neighbours queried per position
  cache_gamma: float = 0.9            # elastic: refresh deeper layers below this similarity
  cache_track: int = 1                # elastic: tracked tokens per layer
  full_attention: bool = False        # model.attention == "bidirectional"
  commit: str = "separate"            # config.COMMIT_MODES
  token_shift: bool = False
  first_token_from_commit: bool = False
  stop_ids: tuple[int, ...] = ()
  context_causal: bool = False        # the model's clean stream is token-causal (NBDiff-style)
  prefill_chunk: int = 256            # prompt positions per prefill forward (whole blocks)
  sparse_attention: str = "none"      # config.SPARSE_ATTENTION ("sparsed": sparsed.py)
  sparsed_skip: float = 0.2           # SparseD: dense steps t <= floor(T * skip) + 1
  sparsed_select: float = 0.5         # SparseD: keep floor(n_tiles * select) + 1 key tiles
  sparsed_tile: int = 32              # SparseD: tile size of the pattern

  @property
  def mask_id(self) -> int:
    return mask_token_id(self.model)

  @property
  def fused(self) -> bool:
    return self.commit == "fused" and not self.full_attention

  @property
  def cache_mode(self) -> str:
    """The resolved ``sample.cache`` (never ``"auto"``); recorded with every output."""
    return config_lib.resolve_cache(self.cache, self.use_cache, self.full_attention)

  @property
  def adaptive_blocks(self) -> bool:
    """Each block's length is chosen at runtime (AdaBlock; full-attention models only)."""
    return self.full_attention and self.strategy.name == "adablock"

  @property
  def prompt_multiple(self) -> int:
    """Prompt widths are rounded up to this (few compiled shapes; whole blocks for the
    block-causal loop, whose buffer is made of blocks)."""
    return 8 if self.full_attention else max(self.block_size, 8)

  @classmethod
  def from_config(cls, cfg, eos_id: int | None = None) -> SamplerConfig:
    """From a full bdiff config (``model``, ``diffusion``, ``sample``) that has been validated.

    Validation happens once, in ``bdiff.sampling.config.validate_sample_config`` (called by
    ``bdiff.config.validate`` and ``bdiff.runs.Sampler``); this only converts.
    """
    s, d = cfg.sample, cfg.diffusion
    full = config_lib.is_full_attention(cfg.model)
    block = config_lib.decode_block_size(s, d.block_size, full)
    stop = (eos_id,) if (s.stop_at_eos and eos_id is not None) else ()
    return cls(model=ml_collections.FrozenConfigDict(cfg.model),
               strategy=config_lib.strategy_config(s, block), block_size=block,
               max_new_tokens=s.max_new_tokens, use_cache=s.use_cache, cache=s.cache,
               cache_refresh=s.cache_refresh, cache_delay=s.cache_delay,
               window_tokens=s.window_tokens, active_tokens=s.active_tokens,
               dkv_window_size=s.dkv_window_size,
               cache_gamma=float(s.cache_gamma), cache_track=s.cache_track,
               full_attention=full, commit=s.commit,
               token_shift=d.token_shift, first_token_from_commit=s.first_token_from_commit,
               stop_ids=stop, context_causal=d.context_causal,
               prefill_chunk=config_lib.prefill_chunk(s, block),
               sparse_attention=s.get("sparse_attention", "none"),
               sparsed_skip=float(s.get("sparsed_skip", 0.2)),
               sparsed_select=float(s.get("sparsed_select", 0.5)),
               sparsed_tile=s.get("sparsed_tile", 32))

  def max_iterations(self, length: int) -> int:
    """Loop bound: per block at most ``max(B, steps)`` denoising steps (plus one commit pass
    for block-causal models); ``length`` is the block-causal loop's buffer length."""
    per_block = max(self.block_size, self.strategy.steps)
    if self.adaptive_blocks:  # blocks of one position at worst, each step commits >= 1
      return self.max_new_tokens + 1
    if self.full_attention:
      return -(-self.max_new_tokens // self.block_size) * per_block + 1
    return (length // self.block_size) * (per_block + 1) + 1


class Rows(NamedTuple):
  """Per-row constants of one call."""
  lengths: jax.Array    # [b] int32 prompt lengths P
  limit: jax.Array      # [b] int32 P + max_new_tokens
  row_ids: jax.Array    # [b] int32 example ids (RNG streams)
  rng: jax.Array        # base PRNG key


def make_rows(config: SamplerConfig, lengths, row_ids, rng) -> Rows:
  lengths = jnp.asarray(lengths).astype(jnp.int32)
  return Rows(lengths, lengths + config.max_new_tokens, jnp.asarray(row_ids).astype(jnp.int32),
              rng)


class LoopState(NamedTuple):
  """The ``while_loop`` carry: per-row buffers and counters, the cache, strategy state."""
  tokens: jax.Array        # [b, L] int32 row buffers; MASK where unknown
  blk_start: jax.Array     # [b] int32 active block start
  step_in_blk: jax.Array   # [b] int32 denoising steps taken in the active block
  needs_commit: jax.Array  # [b] bool block complete, K/V not yet written (block-causal)
  done: jax.Array          # [b] bool
  stop_pos: jax.Array      # [b] int32 first committed stop token (L if none)
  nfe_denoise: jax.Array   # [b] int32
  nfe_commit: jax.Array    # [b] int32
  positions: jax.Array     # [b] int32 positions of the row's canvas computed by its forwards
  prev_logits: jax.Array   # [b, V] raw logits predicting blk_start (shifted models) or [b, 0]
  cache: Any               # (k, v) [n_layers, b, L, kv_heads, head_dim], or None
  strat: dict              # strategy state
  it: jax.Array            # scalar int32 iterations (forwards after prefill)
  trace: Any               # [T, b, L] token buffers per iteration (debug), or None
  blk_len: Any = None      # [b] int32 active block length (AdaBlock), None = block_size
  blk_log: Any = None      # [b, G] int32 chosen lengths, at their block's generation offset
  attn_ext: Any = None     # FlashBlock: per-layer (out, lse) of the block's queries over the
                           # cache, from the block's first step (flashblock.py), or None


def apply_fn(config: SamplerConfig, params):
  model = make_model(config.model)
  return lambda *a, **kw: model.apply({"params": params}, *a, **kw)


def block_positions(state: LoopState, block: int) -> jax.Array:
  return state.blk_start[:, None] + jnp.arange(block, dtype=jnp.int32)[None, :]


def block_end(config: SamplerConfig, state: LoopState) -> jax.Array:
  """``[b]`` end of the active block: ``blk_start`` plus its runtime or fixed length."""
  return state.blk_start + (config.block_size if state.blk_len is None else state.blk_len)


def select_rows(rows_mask: jax.Array, new, old) -> tuple:
  """``new`` where ``rows_mask [b]`` else ``old``, for cache tensors ``[n_layers, b, ...]``."""
  sel = rows_mask[None, :, None, None, None]
  return tuple(jnp.where(sel, n.astype(o.dtype), o) for n, o in zip(new, old))


def split_forward(config: SamplerConfig, state: LoopState, refresh: jax.Array, full, cached,
                  cache):
  """One step of an approximate cache: rows that ``refresh`` run ``full(cache)``, the other
  busy rows ``cached(cache)`` (each ``-> (block logits [b, B, V], cache)``), each under
  ``lax.cond`` and skipped when no busy row needs it, so a row's logits come from its own
  branch whatever the other rows do. Returns ``(block logits, cache)``."""
  busy = ~state.done
  none = jnp.zeros((state.tokens.shape[0], config.block_size, config.model.vocab_size),
                   jnp.float32)
  skip = lambda c: (none, c)  # noqa: E731
  fresh, cache = jax.lax.cond(jnp.any(refresh & busy), full, skip, cache)
  stale, cache = jax.lax.cond(jnp.any(~refresh & busy), cached, skip, cache)
  return jnp.where(refresh[:, None, None], fresh, stale), cache


def step_keys(state: LoopState, rows: Rows) -> jax.Array:
  """``[b]`` this step's per-row keys: ``fold_in(fold_in(rng, row_id), nfe_denoise)``."""
  return jax.vmap(lambda u, n: jax.random.fold_in(jax.random.fold_in(rows.rng, u), n))(
      rows.row_ids, state.nfe_denoise)


def open_positions(config: SamplerConfig, state: LoopState, rows: Rows) -> jax.Array:
  """``[b, B]`` positions of the active block still to be filled (MASK, in budget, pre-stop,
  before the block's end)."""
  pos = block_positions(state, config.block_size)
  win = cache_lib.gather_windows(state.tokens, state.blk_start, config.block_size)
  end = jnp.minimum(rows.limit, jnp.minimum(state.stop_pos, block_end(config, state)))
  return (win == config.mask_id) & (pos < end[:, None])


def first_stop(config: SamplerConfig, commit: jax.Array, values: jax.Array,
               pos: jax.Array, stop_pos: jax.Array) -> jax.Array:
  """``stop_pos`` lowered to the first committed stop token among ``values`` at ``pos``."""
  if not config.stop_ids:
    return stop_pos
  hit = commit & jnp.isin(values, jnp.asarray(config.stop_ids, jnp.int32))
  return jnp.minimum(stop_pos, jnp.min(jnp.where(hit, pos, stop_pos[:, None]), axis=-1))


def block_status(config: SamplerConfig, state: LoopState, rows: Rows):
  """``(finished, advance)`` [b]: rows whose active block just filled, split into those that
  are done (stop token inside it, or budget reached) and those that move on."""
  complete = ~state.done & ~state.needs_commit & ~jnp.any(open_positions(config, state, rows),
                                                           -1)
  end = block_end(config, state)
  finished = complete & ((state.stop_pos < end) | (end >= rows.limit))
  return finished, complete & ~finished


def denoise(config: SamplerConfig, state: LoopState, rows: Rows, logits,
            allowed=None) -> LoopState:
  """One strategy step for the rows that are denoising (commit/stop bookkeeping per row).

  ``logits [b, B, V]``: the active block's logits, already token-shifted. ``allowed [b, B]``
  (optional): the block positions the step may decide (a cache that computed logits for
  some positions only).
  """
  active = ~state.done if config.fused else ~state.done & ~state.needs_commit
  masked = open_positions(config, state, rows) & active[:, None]
  if allowed is not None:
    masked &= allowed
  keys = step_keys(state, rows)
  commit, values, strat = strategies_lib.select(config.strategy, logits, masked, keys,
                                                state.step_in_blk, state.strat)
  commit = commit & masked
  win = cache_lib.gather_windows(state.tokens, state.blk_start, config.block_size)
  tokens = cache_lib.update_windows(state.tokens, jnp.where(commit, values, win),
                                    state.blk_start, active)
  pos = block_positions(state, config.block_size)
  keep = lambda new, old: jnp.where(  # noqa: E731
      active.reshape(active.shape + (1,) * (new.ndim - 1)), new, old)
  inc = active.astype(jnp.int32)
  return state._replace(
      tokens=tokens, stop_pos=first_stop(config, commit, values, pos, state.stop_pos),
      strat=jax.tree.map(keep, strat, state.strat), nfe_denoise=state.nfe_denoise + inc,
      step_in_blk=state.step_in_blk + inc)


def init_trace(config: SamplerConfig, state: LoopState, length: int) -> LoopState:
  """Start the debug trace: ``[T, b, L]`` buffers, the initial one at index 0."""
  bsz = state.tokens.shape[0]
  rec = jnp.full((config.max_iterations(length) + 1, bsz, state.tokens.shape[1]), NO_TOKEN,
                 jnp.int32)
  return state._replace(trace=rec.at[0].set(state.tokens))


def run_loop(config: SamplerConfig, state: LoopState, length: int, step) -> LoopState:
  """``while`` some row is not done (and under the iteration bound): ``state = step(state)``,
  counting iterations and recording the trace."""
  max_it = config.max_iterations(length)

  def cond(st: LoopState):
    return jnp.any(~st.done) & (st.it < max_it)

  def body(st: LoopState):
    st = step(st)._replace(it=st.it + 1)
    if st.trace is not None:
      st = st._replace(trace=st.trace.at[st.it].set(st.tokens))
    return st

  return jax.lax.while_loop(cond, body, state)


def outputs(config: SamplerConfig, state: LoopState, rows: Rows, nfe_prefill: int) -> dict:
  """The loop's output dict (see ``generate.generate``)."""
  g = config.max_new_tokens
  idx = rows.lengths[:, None] + jnp.arange(g, dtype=jnp.int32)[None, :]
  gen = jnp.take_along_axis(state.tokens, jnp.minimum(idx, state.tokens.shape[1] - 1), axis=1)
  count = jnp.minimum(state.stop_pos + 1, rows.limit) - rows.lengths
  gen = jnp.where(jnp.arange(g)[None, :] < count[:, None], gen, NO_TOKEN)
  forwards = state.nfe_denoise + state.nfe_commit
  out = dict(tokens=gen, num_tokens=count, nfe_denoise=state.nfe_denoise,
             nfe_commit=state.nfe_commit, nfe_prefill=jnp.asarray(nfe_prefill, jnp.int32),
             tokens_per_forward=count / jnp.maximum(forwards, 1),
             positions_computed=state.positions, done=state.done, iterations=state.it)
  if state.trace is not None:
    out["trace"] = state.trace
  if state.blk_log is not None:  # AdaBlock: the chosen lengths in decoding order, 0-padded
    order = jnp.argsort(state.blk_log == 0, axis=-1, stable=True)
    out["block_lengths"] = jnp.take_along_axis(state.blk_log, order, axis=-1)
  return out


def defaults(prompts, lengths, row_ids):
  """``lengths`` (default: the full width) and ``row_ids`` (default ``arange(b)``) as arrays."""
  b, width = prompts.shape
  lengths = jnp.full((b,), width, jnp.int32) if lengths is None else jnp.asarray(lengths)
  row_ids = jnp.arange(b, dtype=jnp.int32) if row_ids is None else jnp.asarray(row_ids)
  return lengths, row_ids
