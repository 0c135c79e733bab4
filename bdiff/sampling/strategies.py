"""Decoding strategies: which masked positions of the active block to commit each step.

The sampling loop (``generate.py``) denoises one block of capacity ``L`` at a time. Each
denoising step it runs the model once and calls ``select``; the strategy answers, per row,
which candidate positions to commit and with which tokens. The rules, their sources and their
deviations from the reference code are described in ``docs/decoding.md`` and in each rule's
docstring (``strategies_scheduled.py``, ``strategies_adaptive.py``).

Contract for the loop (all arrays batched, ``b`` rows, block window of ``L`` positions):

* ``state = init_state(cfg, b, L)`` once before the loop; carry it unchanged across blocks
  (strategies reset their per-block parts themselves when ``step_in_block == 0``).
* Every denoising step::

      commit, tokens, state = select(cfg, logits, masked, rng_keys, step_in_block, state)
      block = jnp.where(commit, tokens, block)

  ``logits [b, L, V]`` float32 for the block window (already token-shifted for shifted
  models); ``masked [b, L]`` bool = positions the row may commit now (MASK, inside the active
  block, before the row's generation limit and stop token, row not done);
  ``rng_keys [b]`` per-row keys for this step (``fold_in(fold_in(key, row_uid), step)``);
  ``step_in_block [b]`` (or a scalar) = 0 at a block's first denoising step, +1 per step.
* Guarantees: ``commit ⊆ masked``; any row with a masked position commits at least one
  (except ``ancestral`` / ``ancestral_greedy`` / ``dream`` with ``allow_idle=True``); tokens
  outside ``commit`` are meaningless.
* Termination: run a block until no candidate is left. Scheduled strategies
  (``STRATEGIES[name].scheduled``: static, sequential, sdar_dynamic, dream, prophet,
  ancestral, ancestral_greedy) empty the block in exactly ``cfg.steps`` steps (``steps`` =
  denoising steps **per block**, LLaDA's ``steps / num_blocks``; 0 = the block capacity ``L``,
  i.e. one token per step); step indices ``>= steps`` commit everything left. The other
  strategies take a data-dependent number of steps, at most ``L`` per block.
* ``sub_block`` (Fast-dLLM v2, NBDiff) and ``window`` (DCD) restrict candidates statelessly:
  the current sub-block is the one holding the left-most masked position; the DCD window is the
  first ``window`` masked positions. The loop needs no extra counters for them.
* Prophet fills the whole active block with its argmax when the top-2 logit gap clears the
  threshold, so the block is complete after that step and the loop moves on as for any other
  complete block. ``state["fired"]`` records which rows went all-in at the last step; the loop
  does not read it (it is there for inspection and tests).

AdaBlock: ``adablock_block_length`` implements its block-length rule (most confident
delimiter in a look-ahead window) and the ``adablock`` registry entry runs the Fast-dLLM
threshold rule inside the block. The full-attention loop (``full_attention.py``) calls the
former at each block's first step; the block-causal loop, whose blocks have the trained size,
refuses ``strategy="adablock"``.

Knobs whose default is ``AUTO`` (``confidence_from``, ``nucleus_mode``, ``filter_order``) and
``strict=None``
take the reference convention recorded in the strategy's registry entry (``resolve``). Two
strategies whose reference always samples (``first_hitting``: BD3-LM; ``ancestral``:
MD4/MDLM) read ``temperature=0`` as the reference's ``T = 1``; their argmax variants are
registered under their own names (``first_hitting_greedy``, ``ancestral_greedy``) so a greedy
run is never reported under the reference's name.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from bdiff.sampling import selection as sel
from bdiff.sampling import strategies_adaptive as adaptive
from bdiff.sampling import strategies_scheduled as scheduled
from bdiff.sampling.types import (AUTO, SWEEPABLE, StepInputs, Strategy, StrategyConfig,
                                  resolve_knobs)


def _no_state(cfg: StrategyConfig, batch: int, length: int) -> dict:
  del cfg, batch, length
  return {}


_S, _A = scheduled, adaptive
_SAMPLING = "sampling"  # scores read from the tempered, filtered distribution
STRATEGIES: dict[str, Strategy] = {
    # Per-block step budget cfg.steps (strategies_scheduled.py).
    "static": Strategy(_S.static_rule, _S.schedule_init, scheduled=True),
    "sequential": Strategy(_S.sequential_rule, _S.schedule_init, scheduled=True,
                           confidence_from=_SAMPLING),
    "sdar_dynamic": Strategy(_S.sdar_dynamic_rule, _S.schedule_init, scheduled=True,
                             strict=True, confidence_from=_SAMPLING),
    "dream": Strategy(_S.dream_rule, _no_state, scheduled=True, confidence_from=_SAMPLING,
                      filter_order="p_then_k"),
    "prophet": Strategy(_S.prophet_rule, _S.prophet_init, scheduled=True),
    "ancestral": Strategy(_S.ancestral_rule, _no_state, scheduled=True, always_samples=True),
    "ancestral_greedy": Strategy(_S.ancestral_rule, _no_state, scheduled=True, greedy=True),
    # One position per step.
    "first_hitting": Strategy(_S.first_hitting_rule, _S.first_hitting_init, scheduled=False,
                              nucleus_mode="n2", always_samples=True),
    "first_hitting_greedy": Strategy(_S.first_hitting_rule, _S.first_hitting_init,
                                     scheduled=False, nucleus_mode="n2", greedy=True),
    "ar": Strategy(_S.ar_rule, _no_state, scheduled=False),
    # Data-dependent number of steps (strategies_adaptive.py).
    "fixed_k": Strategy(_A.fixed_k_rule, _no_state, scheduled=False,
                        confidence_from=_SAMPLING),
    "threshold": Strategy(_A.threshold_rule, _no_state, scheduled=False),
    "fast_dllm_v2": Strategy(_A.threshold_rule, _no_state, scheduled=False, strict=True,
                             confidence_from=_SAMPLING, needs=("sub_block",)),
    "dcd": Strategy(_A.threshold_rule, _no_state, scheduled=False, confidence_from=_SAMPLING,
                    needs=("window",)),
    "adablock": Strategy(_A.threshold_rule, _no_state, scheduled=False,
                         needs=("delimiter_ids",)),
    "factor": Strategy(_A.factor_rule, _no_state, scheduled=False),
    "entropy_bounded": Strategy(_A.entropy_bounded_rule, _no_state, scheduled=False),
    "entropy_bounded_sdar": Strategy(_A.entropy_bounded_sdar_rule, _no_state, scheduled=False,
                                     strict=True, confidence_from=_SAMPLING),
    "local_leap": Strategy(_A.local_leap_rule, _no_state, scheduled=False),
    "bacd": Strategy(_A.bacd_rule, _A.bacd_init, scheduled=False, confidence_from=_SAMPLING),
}


def resolve(cfg: StrategyConfig) -> StrategyConfig:
  """``cfg`` with ``strict``, ``confidence_from``, ``nucleus_mode``, ``filter_order`` (and, for
  strategies whose reference always samples, ``temperature=0``) replaced by the strategy's
  reference convention wherever the config leaves them to it."""
  return resolve_knobs(cfg, STRATEGIES[cfg.name])


def adablock_block_length(cfg: StrategyConfig, logits: jax.Array, masked: jax.Array,
                          rng_keys: jax.Array, remaining: jax.Array) -> jax.Array:
  """AdaBlock's block-length rule (``strategies_adaptive.adablock_block_length``) with the
  config's reference conventions resolved (the full-attention loop calls it, see above)."""
  return adaptive.adablock_block_length(resolve(cfg), logits, masked, rng_keys, remaining)


def init_state(cfg: StrategyConfig, batch: int, length: int) -> dict:
  """Fixed-shape strategy state (a dict of ``[batch]`` arrays; ``{}`` when stateless)."""
  return STRATEGIES[cfg.name].init(cfg, batch, length)


def restrict_candidates(cfg: StrategyConfig, masked: jax.Array) -> jax.Array:
  """Sub-block (Fast-dLLM v2) and sliding-window (DCD) candidate sets.

  Both are functions of ``masked`` alone: sub-blocks are processed left to right until empty,
  so the active one holds the left-most masked position; the DCD window ``[wl, wr)`` starts at
  the first masked position and grows by what was just decoded so that it always holds
  ``window`` masks, i.e. it is the first ``window`` masked positions (capped at
  ``max_window`` positions from ``wl``).
  """
  pos = jnp.arange(masked.shape[-1], dtype=jnp.int32)[None, :]
  first = jnp.argmax(masked, axis=-1).astype(jnp.int32)[:, None]
  cand = masked
  if cfg.sub_block > 0:
    cand = cand & (pos // cfg.sub_block == first // cfg.sub_block)
  if cfg.window > 0:
    cand = sel.leftmost_masks(cand, cfg.window)
    if cfg.max_window > 0:
      cand = cand & (pos - first < cfg.max_window)
  return cand


def step_inputs(cfg: StrategyConfig, logits: jax.Array, masked: jax.Array,
                rng_keys: jax.Array, step_in_block: jax.Array | int) -> StepInputs:
  """Proposals, scores and candidates for one step (shared by all strategies)."""
  logits = logits.astype(jnp.float32)
  b = logits.shape[0]
  filtered = sel.sampling_logits(logits, cfg.temperature, cfg.top_k, cfg.top_p,
                                 cfg.nucleus_mode, cfg.filter_order)
  tokens = sel.sample_tokens(filtered, rng_keys, cfg.temperature)
  probs = jax.nn.softmax(filtered if cfg.confidence_from == "sampling" else logits, axis=-1)
  score = sel.confidence(probs, tokens, cfg.confidence, rng_keys)
  if cfg.suppress_ids:
    # The intent of LLaDA's confidence_eos_eot_inf (ML-GSAI/LLaDA generate.py, arXiv
    # 2502.09992 App. B.4): an EOS/EoT proposal must not win the confidence ranking.
    score = jnp.where(jnp.isin(tokens, jnp.asarray(cfg.suppress_ids)), -jnp.inf, score)
  step = jnp.broadcast_to(jnp.asarray(step_in_block, jnp.int32), (b,))
  return StepInputs(logits, filtered, probs, tokens, score,
                    restrict_candidates(cfg, masked), rng_keys, step)


def select(cfg: StrategyConfig, logits: jax.Array, masked: jax.Array, rng_keys: jax.Array,
           step_in_block: jax.Array | int, state: dict
           ) -> tuple[jax.Array, jax.Array, dict]:
  """One denoising decision of strategy ``cfg.name`` (see the module docstring).

  Args:
    cfg: strategy config, static or a pytree argument (validate it before tracing).
    logits: ``[b, L, V]`` block-window logits (fp32, real tokens only).
    masked: ``[b, L]`` bool, positions the row may commit this step.
    rng_keys: ``[b]`` per-row PRNG keys for this step.
    step_in_block: ``[b]`` int32 or scalar, 0 at each block's first denoising step.
    state: strategy state from ``init_state`` or the previous call.

  Returns:
    ``(commit [b, L] bool, tokens [b, L] int32, new_state)``.
  """
  cfg = resolve(cfg)  # rules read concrete conventions, never AUTO / None
  inp = step_inputs(cfg, logits, masked, rng_keys, step_in_block)
  commit, tokens, state = STRATEGIES[cfg.name].rule(cfg, inp, state)
  commit = commit & inp.cand
  if not cfg.allow_idle:
    commit = sel.ensure_progress(commit, inp.score, inp.cand)
  return commit, tokens.astype(jnp.int32), state


# ------------------------------------------------------------------------------------------
# Validation


def _fail(prefix: str, key: str, msg: str) -> None:
  raise ValueError(f"{prefix}.{key}: {msg}")


def _check_choices(cfg: StrategyConfig, prefix: str) -> None:
  choices = {
      "confidence": sel.CONFIDENCE_KINDS, "confidence_from": ("raw", _SAMPLING, AUTO),
      "nucleus_mode": sel.NUCLEUS_MODES + (AUTO,),
      "filter_order": sel.FILTER_ORDERS + (AUTO,), "time_grid": scheduled.TIME_GRIDS}
  for key, valid in choices.items():
    if getattr(cfg, key) not in valid:
      _fail(prefix, key, f"{getattr(cfg, key)!r} is not one of {valid}")


def _check_ranges(cfg: StrategyConfig, prefix: str) -> None:
  def unit(key, value):
    if not 0.0 < value <= 1.0:
      _fail(prefix, key, f"must be in (0, 1], got {value!r}")

  for key in ("threshold", "top_p", "relaxed_threshold", "threshold_low", "threshold_high",
              "delimiter_threshold"):
    unit(key, getattr(cfg, key))
  for key in ("temperature", "gamma"):
    if getattr(cfg, key) < 0:
      _fail(prefix, key, f"must be >= 0, got {getattr(cfg, key)!r}")
  for key in ("k", "block_length"):
    if not isinstance(getattr(cfg, key), int) or getattr(cfg, key) < 1:
      _fail(prefix, key, f"must be an integer >= 1, got {getattr(cfg, key)!r}")
  for key in ("steps", "top_k", "radius", "sub_block", "window", "max_window", "lookahead"):
    if not isinstance(getattr(cfg, key), int) or getattr(cfg, key) < 0:
      _fail(prefix, key, f"must be an integer >= 0, got {getattr(cfg, key)!r}")
  if cfg.factor <= 0:
    _fail(prefix, "factor", f"must be > 0, got {cfg.factor!r}")
  if cfg.threshold_low > cfg.threshold_high:
    _fail(prefix, "threshold_low", "must be <= sample.threshold_high")
  bounds = cfg.prophet_bounds
  if len(cfg.prophet_gaps) != len(bounds) + 1:
    _fail(prefix, "prophet_gaps", "needs exactly len(sample.prophet_bounds) + 1 values")
  if list(bounds) != sorted(bounds) or any(not 0 < x < 1 for x in bounds):
    _fail(prefix, "prophet_bounds", f"must be increasing in (0, 1), got {bounds!r}")


def validate_strategy_config(cfg: StrategyConfig, prefix: str = "sample") -> StrategyConfig:
  """Raises ``ValueError`` naming the offending key (``sample.<field>``); returns ``cfg``."""
  if cfg.name not in STRATEGIES:
    _fail(prefix, "strategy", f"unknown strategy {cfg.name!r}; valid: {sorted(STRATEGIES)}")
  _check_choices(cfg, prefix)
  _check_ranges(cfg, prefix)
  strat = STRATEGIES[cfg.name]
  for key in strat.needs:
    if not getattr(cfg, key):
      _fail(prefix, key, f"strategy {cfg.name!r} needs it set (> 0 / non-empty)")
  if strat.scheduled and (cfg.sub_block or cfg.window):
    key = "sub_block" if cfg.sub_block else "window"
    _fail(prefix, key, f"not supported by the scheduled strategy {cfg.name!r}")
  if cfg.allow_idle and strat.rule not in (scheduled.ancestral_rule, scheduled.dream_rule):
    _fail(prefix, "allow_idle", "only the 'ancestral' and 'dream' strategies may commit "
          "nothing in a step")
  if strat.greedy and cfg.temperature != 0:
    _fail(prefix, "temperature", f"strategy {cfg.name!r} is the argmax variant and needs "
          f"temperature=0; use {cfg.name.removesuffix('_greedy')!r} to sample")
  if any((not isinstance(i, int)) or i < 0 for i in cfg.suppress_ids + cfg.delimiter_ids):
    _fail(prefix, "suppress_ids" if cfg.suppress_ids else "delimiter_ids",
          "token ids must be integers >= 0")
  return cfg
