"""Data-dependent commit rules: thresholds, factor, entropy bound, LocalLeap, BACD, AdaBlock.

Rules have the registry signature ``rule(cfg, inp, state) -> (commit, tokens, state)`` with
``inp`` a ``types.StepInputs`` (candidates already restricted to the Fast-dLLM v2
sub-block or DCD window); ``strategies.select`` adds the never-stall ``TOP1`` and resolves
``cfg.strict`` to the reference comparison. These rules run a block until it has no masks.
"""
from __future__ import annotations


import jax
import jax.numpy as jnp

from bdiff.sampling import selection as sel
from bdiff.sampling.types import StepInputs, StrategyConfig


def fixed_k_rule(cfg: StrategyConfig, inp: StepInputs, state: dict):
  """``TOPK(k)`` every step: DCD ``decode_algo = fixed`` (§2.14), Elastic-Cache
  ``tokens_per_iter`` (§2.10), NBDiff one-token-per-step ``alg`` with ``k = 1`` and
  ``sub_block`` (§2.7)."""
  return sel.topk_mask(inp.score, inp.cand, cfg.k), inp.tokens, state


def threshold_rule(cfg: StrategyConfig, inp: StepInputs, state: dict):
  """Confidence threshold with at least one: ``S = THR(τ) ∪ TOP1``.

  Registered as:

  * ``threshold`` — Fast-dLLM v1 ``get_transfer_index`` (NVlabs/Fast-dLLM
    ``llada/generate.py``, arXiv 2505.22618, decoding.md §2.5): ``c >= τ`` on the raw
    probability; default ``τ = 0.9``. Also CD4LM's confidence-adaptive decoding (§2.20,
    [inferred]) and NBDiff ``confidence_threshold`` with ``strict=True`` and ``sub_block``.
  * ``fast_dllm_v2`` — NVlabs/Fast-dLLM ``v2/generation_functions.py`` ``batch_sample``
    (arXiv 2509.26328, §2.6): strict ``c > τ`` within the current sub-block (``sub_block``,
    eval default 8 of ``B = 32``), ``confidence_from = "sampling"``, ``top_p = 0.95``.
  * ``dcd`` — shuyingte/DCD ``window_bidirectional_decode`` / ``window_causal_decode``
    (arXiv 2601.02076, §2.14): ``n = max(#{c >= τ}, 1)``, ``TOPK(n)`` in the sliding window
    of ``window`` masks (``W0`` 16 LLaDA/Dream, 8 Fast-dLLM v2). That equals ``THR ∪ TOP1``.
    Cache-refresh counters and the optional block expansion are the loop's business.
  * ``adablock`` — lgxi24/AdaBlock-dLLM (arXiv 2509.26432, §2.13): the Fast-dLLM rule inside
    a block whose length ``adablock_block_length`` chose.
  """
  commit = sel.threshold_mask(inp.score, inp.cand, cfg.threshold, bool(cfg.strict))
  return commit, inp.tokens, state


def factor_rule(cfg: StrategyConfig, inp: StepInputs, state: dict):
  """Fast-dLLM factor rule: the top-``n*`` with ``(n + 1)(1 - c_(n)) <= f``.

  Source: NVlabs/Fast-dLLM ``get_transfer_index`` (factor branch) as used in
  furiosa-ai/ParallelBench ``model/dream_model_utils.py`` (decoding.md §2.5). ``PREFIX`` with
  ``ok_j = (j = 0) ∨ (c_(j) >= 1 - f/(j+2))`` (0-based). ``factor_quirk`` replicates the
  reference committing all ``N`` candidates when only the last one fails.
  """
  def ok(j, sorted_c):
    return (j == 0) | (sorted_c >= 1.0 - cfg.factor / (j + 2.0))

  commit = sel.prefix_mask(inp.score, inp.cand, ok)
  if cfg.factor_quirk:
    n_cand = sel.count(inp.cand)
    commit = jnp.where((sel.count(commit) == n_cand - 1)[:, None], inp.cand, commit)
  return commit, inp.tokens, state


def entropy_bounded_rule(cfg: StrategyConfig, inp: StepInputs, state: dict):
  """EB-sampler: commit the lowest-entropy candidates while their cumulative entropy ``<= γ``.

  Source: JetAstra/SDAR ``generate.py`` ``entropy_bounded`` (commit c2041a83; decoding.md
  §2.8), EB-sampler. At least one. bdiff uses the true entropy ``-Σ p log p`` of the score
  distribution (``confidence_from``; SDAR: ``"sampling"``), not the reference's reported
  sampled-token variant [unverified]; default ``γ = 0.35``. Ignores ``cfg.confidence``.
  """
  neg_h = sel.neg_entropy(inp.probs)

  def ok(j, sorted_neg_h):
    return (j == 0) | (jnp.cumsum(-sorted_neg_h, axis=-1) <= cfg.gamma)

  return sel.prefix_mask(neg_h, inp.cand, ok), inp.tokens, state


def dilate(mask: jax.Array, radius: int) -> jax.Array:
  """``[b, L]`` bool: True within ``radius`` positions of a True (1-D max-pool, clipped)."""
  length = mask.shape[-1]
  csum = jnp.cumsum(mask.astype(jnp.int32), axis=-1)
  csum = jnp.concatenate([jnp.zeros_like(csum[:, :1]), csum], axis=-1)  # [b, L + 1]
  pos = jnp.arange(length)
  hi = jnp.broadcast_to(jnp.minimum(pos + radius + 1, length), mask.shape)
  lo = jnp.broadcast_to(jnp.maximum(pos - radius, 0), mask.shape)
  return (jnp.take_along_axis(csum, hi, -1) - jnp.take_along_axis(csum, lo, -1)) > 0


def local_leap_rule(cfg: StrategyConfig, inp: StepInputs, state: dict):
  """LocalLeap: anchors ``c >= τ`` plus neighbours within ``r`` with ``c >= τ_relaxed``.

  Source: arXiv 2510.07081, friedrichor/LocalLeap ``generate.py`` (decoding.md §2.12):
  ``S = A ∪ {i ∈ N(A, r) ∩ C : c_i >= τ_relaxed} ∪ TOP1``; defaults ``τ = 0.9``,
  ``τ_relaxed = 0.75``, ``r = 4``.
  """
  anchors = sel.threshold_mask(inp.score, inp.cand, cfg.threshold)
  near = dilate(anchors, cfg.radius)
  relaxed = sel.threshold_mask(inp.score, inp.cand & near, cfg.relaxed_threshold)
  return anchors | relaxed, inp.tokens, state


def bacd_init(cfg: StrategyConfig, batch: int, length: int) -> dict:
  """BACD history of the current block: sum and count of committed confidences."""
  del cfg, length
  return {"h_sum": jnp.zeros((batch,), jnp.float32), "h_cnt": jnp.zeros((batch,), jnp.int32)}


def bacd_rule(cfg: StrategyConfig, inp: StepInputs, state: dict):
  """BACD (TDAR): threshold = block's running mean committed confidence, clipped.

  Source: LuLuLuyi/TDAR lmdeploy ``unmasking.py`` ``bounded_adaptive_confidence_decoding``
  (arXiv 2602.09555, decoding.md §2.15): ``τ = clip(mean(H) or max_C c if H empty, τ_lo,
  τ_hi)``, ``S = {c >= τ}`` or ``TOP1`` if empty, ``H ← H ∪ c_S``; ``H`` resets at block
  start.
  Reference: ``threshold_low = 0.6``, ``threshold_high = 0.9``, ``confidence_from =
  "sampling"``.
  """
  fresh = inp.step == 0
  h_sum = jnp.where(fresh, 0.0, state["h_sum"])
  h_cnt = jnp.where(fresh, 0, state["h_cnt"])
  max_c = jnp.max(jnp.where(inp.cand, inp.score, -jnp.inf), axis=-1)
  tau = jnp.where(h_cnt == 0, max_c, h_sum / jnp.maximum(h_cnt, 1))
  tau = jnp.clip(tau, cfg.threshold_low, cfg.threshold_high)
  commit = sel.threshold_mask(inp.score, inp.cand, tau)
  commit = sel.ensure_progress(commit, inp.score, inp.cand)  # H must include the forced TOP1
  h_sum = h_sum + jnp.sum(jnp.where(commit, inp.score, 0.0), axis=-1)
  return commit, inp.tokens, {"h_sum": h_sum, "h_cnt": h_cnt + sel.count(commit)}


def adablock_block_length(cfg: StrategyConfig, logits: jax.Array, masked: jax.Array,
                          rng_keys: jax.Array, remaining: jax.Array) -> jax.Array:
  """AdaBlock block length from the most confident delimiter in the look-ahead window.

  Source: lgxi24/AdaBlock-dLLM ``llada/generate_adablock.py`` ``compute_block_length``
  (arXiv 2509.26432, decoding.md §2.13). Call at a block's first step with that step's
  logits over a window starting at the block start; pass the same ``rng_keys`` as to
  ``select`` so the proposals agree. Among still-masked positions ``j < min(lookahead,
  remaining)`` whose proposal is in ``delimiter_ids`` (LLaDA: 198 "\\n"), take the one with
  the highest raw ``softmax(z)[x̂]``; if that is ``>= delimiter_threshold`` (0.3 LLaDA, 0.5
  Dream) the block ends right after it, else it has ``min(block_length, remaining)``.
  Deviation [bdiff]: capped at the window capacity ``W`` (the loop's ``B_max``), since a
  model trained with block ``B_max`` cannot attend a longer block.

  Args:
    cfg: config with ``delimiter_ids``, ``delimiter_threshold``, ``block_length`` (B0),
      ``lookahead`` (``floor(0.25 G)``; 0 = whole window) and the proposal knobs.
    logits: ``[b, W, V]``.
    masked: ``[b, W]`` bool, still-masked positions of the window.
    rng_keys: ``[b]`` per-row keys of this step.
    remaining: ``[b]`` int32 tokens left in the row's generation budget.

  Returns:
    ``[b]`` int32 block length in ``[min(1, remaining), min(W, remaining)]``.
  """
  b, width, _ = logits.shape
  tokens, _ = sel.propose(logits, rng_keys, cfg.temperature, cfg.top_k, cfg.top_p,
                          cfg.nucleus_mode, cfg.filter_order)
  conf = sel.token_prob(jax.nn.softmax(logits.astype(jnp.float32), axis=-1), tokens)
  look = jnp.minimum(cfg.lookahead or width, remaining)[:, None]
  pos = jnp.arange(width, dtype=jnp.int32)[None, :]
  delim = masked & (pos < look) & jnp.isin(tokens, jnp.asarray(cfg.delimiter_ids))
  best = jnp.argmax(jnp.where(delim, conf, -1.0), axis=-1).astype(jnp.int32)
  best_c = jnp.max(jnp.where(delim, conf, -1.0), axis=-1)
  default = jnp.minimum(cfg.block_length, remaining)
  length = jnp.where(best_c >= cfg.delimiter_threshold, best + 1, default)
  cap = jnp.minimum(width, remaining)
  return jnp.clip(length, jnp.minimum(1, remaining), cap).astype(jnp.int32)
