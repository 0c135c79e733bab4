"""Data-dependent commit rules: thresholds, factor, entropy bound, LocalLeap, BACD, AdaBlock.

Rules have the registry signature ``rule(cfg, inp, state) -> (commit, tokens, state)`` with
``inp`` a ``types.StepInputs`` (candidates already restricted to the Fast-dLLM v2
sub-block or DCD window); ``strategies.select`` adds the never-stall ``TOP1`` and resolves
``cfg.strict`` / ``cfg.confidence_from`` to the reference conventions recorded in the
registry. These rules run a block until it has no masks.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from bdiff.sampling import selection as sel
from bdiff.sampling.types import StepInputs, StrategyConfig


def fixed_k_rule(cfg: StrategyConfig, inp: StepInputs, state: dict):
  """``TOPK(k)`` every step.

  Sources: shuyingte/DCD ``decode_algorithm.py`` ``decode_algo = fixed`` (arXiv 2601.02076;
  scores from the tempered, filtered distribution, hence ``confidence_from = "sampling"`` by
  default); also VILA-Lab/Elastic-Cache ``tokens_per_iter`` (arXiv 2510.14973, raw scores:
  set ``confidence_from="raw"``) and YuchuanTian/NBDiff's one-token-per-step ``alg`` values
  (arXiv 2512.06776) with ``k = 1`` and ``sub_block``.
  """
  return sel.topk_mask(inp.score, inp.cand, cfg.k), inp.tokens, state


def threshold_rule(cfg: StrategyConfig, inp: StepInputs, state: dict):
  """Confidence threshold with at least one: ``S = THR(τ) ∪ TOP1``.

  Registered as:

  * ``threshold`` — Fast-dLLM v1 ``get_transfer_index`` (NVlabs/Fast-dLLM
    ``llada/generate.py``, arXiv 2505.22618): ``c >= τ`` on the raw probability (reference
    defaults ``strict=False``, ``confidence_from="raw"``); ``τ = 0.9``. NBDiff's
    ``confidence_threshold`` (YuchuanTian/NBDiff, arXiv 2512.06776) is this rule with
    ``strict=True``, ``confidence_from="sampling"`` and ``sub_block``. CD4LM (arXiv
    2601.02236) describes its confidence-adaptive decoding in words that match this rule; its
    code was not checked.
  * ``fast_dllm_v2`` — NVlabs/Fast-dLLM ``v2/generation_functions.py`` ``batch_sample``
    (arXiv 2509.26328): strict ``c > τ`` within the current sub-block (``sub_block``, eval
    default 8 of ``B = 32``), scores from the sampling distribution; reference
    ``top_p = 0.95``.
  * ``dcd`` — shuyingte/DCD ``window_bidirectional_decode`` / ``window_causal_decode``
    (arXiv 2601.02076): ``n = max(#{c >= τ}, 1)``, ``TOPK(n)`` in the sliding window of
    ``window`` masks (``W0`` 16 LLaDA/Dream, 8 Fast-dLLM v2), scores from the sampling
    distribution. That equals ``THR ∪ TOP1``. DCD's cache, refreshed after ``refresh_count``
    decoded tokens, is ``sample.cache="dcd_prefix"|"dcd_dual"`` for full-attention models
    (``dcd_cache.py``); its block expansion (block-causal models) is not implemented.
  * ``adablock`` — lgxi24/AdaBlock-dLLM (arXiv 2509.26432): the Fast-dLLM rule. AdaBlock's
    own contribution, the block length, is ``adablock_block_length`` below, which the
    full-attention loop (``full_attention.py``) calls at each block's first step; the
    block-causal loop, whose blocks have the trained size, refuses this strategy.
  """
  commit = sel.threshold_mask(inp.score, inp.cand, cfg.threshold, bool(cfg.strict))
  return commit, inp.tokens, state


def factor_rule(cfg: StrategyConfig, inp: StepInputs, state: dict):
  """Fast-dLLM factor rule: the top-``n*`` with ``(n + 1)(1 - c_(n)) <= f``.

  Source: NVlabs/Fast-dLLM ``get_transfer_index`` (factor branch) as used in
  furiosa-ai/ParallelBench ``model/dream_model_utils.py`` (arXiv 2505.22618). ``PREFIX`` with
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


def _bounded_prefix(cfg: StrategyConfig, inp: StepInputs, cost: jax.Array,
                    exclusive: bool) -> jax.Array:
  """Candidates in ascending ``cost`` order: the longest prefix whose cost sum passes ``γ``.

  The sum runs over the prefix before the position (``exclusive``, the EB-sampler's
  ``Σ H - max H``: the costs are sorted ascending, so the running max is the position's own
  cost) or up to and including it. ``cfg.strict`` picks ``< γ`` or ``<= γ``. The first
  candidate always goes. Ties go to the lower position.
  """
  def ok(j, sorted_neg_cost):
    cost_sorted = -sorted_neg_cost
    total = jnp.cumsum(cost_sorted, axis=-1) - (cost_sorted if exclusive else 0.0)
    passed = (total < cfg.gamma) if cfg.strict else (total <= cfg.gamma)
    return (j == 0) | passed

  return sel.prefix_mask(-cost, inp.cand, ok)


def entropy_bounded_rule(cfg: StrategyConfig, inp: StepInputs, state: dict):
  """EB-sampler: the lowest-entropy candidates while ``Σ H - max H <= γ``.

  Source: Ben-Hamu, Gat, Severo, Nolte, Karrer, "Accelerated Sampling from Masked Diffusion
  Models via Entropy Bounded Unmasking", arXiv 2505.24857. Sort the candidates by the entropy
  ``H_i = -Σ_v p_i(v) log p_i(v)`` of the model's distribution (``confidence_from = "raw"``
  by default) ascending and commit the largest prefix ``U`` with
  ``Σ_{i∈U} H_i - max_{i∈U} H_i <= γ`` (at least one). Ignores ``cfg.confidence``.
  ``sample.strict=true`` makes the bound strict. ``γ`` default 0.35 (SDAR's; the paper sweeps
  it). The variant released in JetAstra/SDAR is ``entropy_bounded_sdar``.
  """
  cost = -sel.neg_entropy(inp.probs)
  return _bounded_prefix(cfg, inp, cost, exclusive=True), inp.tokens, state


def entropy_bounded_sdar_rule(cfg: StrategyConfig, inp: StepInputs, state: dict):
  """SDAR's released ``entropy_bounded`` remasking: ``Σ -p(x̂) log p(x̂) < γ``.

  Source: JetAstra/SDAR ``generate.py`` ``block_diffusion_generate``,
  ``remasking_strategy="entropy_bounded"`` (commit c2041a8; arXiv 2510.06303). Its "entropy"
  is computed from the sampled token's probability alone, ``h_i = -p_i(x̂_i) log p_i(x̂_i)``
  (``p`` clamped at 1e-12) under the sampling distribution (temperature, top-k, top-p), not
  the entropy of the distribution; candidates are sorted by ``h`` ascending and the prefix
  with cumulative sum ``< γ`` (``searchsorted(..., right=False)``: strict by default) is
  committed, at least one; ``eb_threshold`` default 0.35.
  Deviation [bdiff]: the released code also sums ``h`` over the block axis, so every position
  of a row gets the same value, and it never initialises its transfer mask in this branch (it
  cannot run as released); bdiff applies ``h`` per position, the evident intent.
  """
  p = jnp.maximum(sel.token_prob(inp.probs, inp.tokens), 1e-12)
  cost = -p * jnp.log(p)
  return _bounded_prefix(cfg, inp, cost, exclusive=False), inp.tokens, state


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

  Source: "LocalLeap", arXiv 2510.07081, reference code friedrichor/LocalLeap
  ``generate.py`` (a Fast-dLLM-style threshold decoder with two extra arguments):
  ``S = A ∪ {i ∈ N(A, r) ∩ C : c_i >= τ_relaxed} ∪ TOP1`` with anchors
  ``A = {i ∈ C : c_i >= τ}`` and ``N(A, r)`` the positions within ``r`` of an anchor; raw
  scores; defaults ``τ = 0.9``, ``τ_relaxed = 0.75``, ``r = 4``. Both comparisons are ``>=``
  in the reference; ``sample.strict=true`` makes both ``>``. The paper's "progressive spatial
  consistency decay" appears in that code only as the bounded radius with one relaxed
  threshold, and so here.
  """
  strict = bool(cfg.strict)
  anchors = sel.threshold_mask(inp.score, inp.cand, cfg.threshold, strict)
  near = dilate(anchors, cfg.radius)
  relaxed = sel.threshold_mask(inp.score, inp.cand & near, cfg.relaxed_threshold, strict)
  return anchors | relaxed, inp.tokens, state


def bacd_init(cfg: StrategyConfig, batch: int, length: int) -> dict:
  """BACD history of the current block: sum and count of committed confidences."""
  del cfg, length
  return {"h_sum": jnp.zeros((batch,), jnp.float32), "h_cnt": jnp.zeros((batch,), jnp.int32)}


def bacd_rule(cfg: StrategyConfig, inp: StepInputs, state: dict):
  """BACD (TDAR): threshold = block's running mean committed confidence, clipped.

  Source: LuLuLuyi/TDAR ``third_party/lmdeploy-0.10.2/lmdeploy/pytorch/strategies/dllm/
  unmasking.py`` ``bounded_adaptive_confidence_decoding`` ("Advancing Block Diffusion LMs for
  Test-Time Scaling", arXiv 2602.09555): ``τ = clip(mean(H), τ_lo, τ_hi)``, or
  ``clip(max_C c, τ_lo, τ_hi)`` while the history ``H`` of the block is empty;
  ``S = {c >= τ}``, or ``TOP1`` if empty; ``H ← H ∪ c_S``; ``H`` resets when a block starts.
  Reference: ``threshold_low = 0.6``, ``threshold_high = 0.9``, scores from the sampling
  distribution, ``>=`` (``sample.strict=true`` makes it ``>``).
  """
  fresh = inp.step == 0
  h_sum = jnp.where(fresh, 0.0, state["h_sum"])
  h_cnt = jnp.where(fresh, 0, state["h_cnt"])
  max_c = jnp.max(jnp.where(inp.cand, inp.score, -jnp.inf), axis=-1)
  tau = jnp.where(h_cnt == 0, max_c, h_sum / jnp.maximum(h_cnt, 1))
  tau = jnp.clip(tau, cfg.threshold_low, cfg.threshold_high)
  commit = sel.threshold_mask(inp.score, inp.cand, tau, bool(cfg.strict))
  commit = sel.ensure_progress(commit, inp.score, inp.cand)  # H must include the forced TOP1
  h_sum = h_sum + jnp.sum(jnp.where(commit, inp.score, 0.0), axis=-1)
  return commit, inp.tokens, {"h_sum": h_sum, "h_cnt": h_cnt + sel.count(commit)}


def adablock_block_length(cfg: StrategyConfig, logits: jax.Array, masked: jax.Array,
                          rng_keys: jax.Array, remaining: jax.Array) -> jax.Array:
  """AdaBlock block length from the most confident delimiter in the look-ahead window.

  Source: lgxi24/AdaBlock-dLLM ``llada/generate_adablock.py`` ``compute_block_length``
  (arXiv 2509.26432). The full-attention loop calls it at a block's first step, with that
  step's logits over a window starting at the block start and the same ``rng_keys`` as
  ``select`` so the proposals agree; ``cfg`` resolved (``strategies.adablock_block_length``
  does it).
  Among still-masked positions ``j < min(lookahead, remaining)`` whose proposal is in
  ``delimiter_ids`` (LLaDA: 198 "\\n"), take the one with the highest raw
  ``softmax(z)[x̂]``; if that is ``>= delimiter_threshold`` (0.3 LLaDA, 0.5 Dream) the block
  ends right after it, else it has ``min(block_length, remaining)``.
  Deviation [bdiff]: capped at the window width ``W`` (``sample.block_size``, the longest
  block, a static shape; the reference's bound is the look-ahead ``0.25 G``, so set
  ``W = lookahead`` to match it).

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
