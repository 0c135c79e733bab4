"""Proposals, scores and fixed-shape selection primitives shared by every strategy.

Everything here is a pure ``jnp`` function on batched arrays with a leading row dimension:
logits ``[b, L, V]`` (fp32, real tokens only, MASK excluded), positions ``[b, L]``. A row's
result depends only on that row's inputs and its own PRNG key (keys ``[b]``, derived by the
caller with ``fold_in(row_uid)``), never on other rows, so outputs do not change with batch
size or composition.

Selection primitives take a float score ``[b, L]`` and a candidate mask ``[b, L]`` and return
boolean commit masks. Candidates always sort before non-candidates, candidate scores are
compared descending, and ties go to the lower position (``torch.topk``, which the reference
implementations use, leaves tie order unspecified; bdiff fixes it so results are
reproducible).
"""
from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

CONFIDENCE_KINDS = ("prob", "margin", "neg_entropy", "random")
NUCLEUS_MODES = ("n1", "n2")
FILTER_ORDERS = ("k_then_p", "p_then_k")

# Salts that give each random draw of a step its own stream from the row key.
SALT_TOKENS, SALT_SCORE, SALT_REVEAL = 0, 1, 2


def row_keys(keys: jax.Array, salt: int) -> jax.Array:
  """Per-row keys ``[b]`` for one named random draw (``fold_in(key_r, salt)``)."""
  return jax.vmap(lambda k: jax.random.fold_in(k, salt))(keys)


def row_uniform(keys: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """``U(0, 1)`` of ``shape`` per row, ``[b, *shape]``; row r uses only ``keys[r]``."""
  return jax.vmap(lambda k: jax.random.uniform(k, shape, jnp.float32))(keys)


# ------------------------------------------------------------------------------------------
# Filters and proposals


def top_k_filter(logits: jax.Array, k: int) -> jax.Array:
  """Keeps logits ``>=`` the k-th largest (ties kept, SDAR); ``k <= 0`` disables."""
  if k <= 0 or k >= logits.shape[-1]:
    return logits
  kth = jax.lax.top_k(logits, k)[0][..., -1:]
  return jnp.where(logits >= kth, logits, -jnp.inf)


def top_p_filter(logits: jax.Array, p: float, mode: str = "n1") -> jax.Array:
  """Nucleus filter on ``softmax(logits)``; ``p >= 1`` disables.

  Args:
    logits: ``[..., V]``.
    p: nucleus mass.
    mode: ``"n1"`` keeps the token whose cumulative mass crosses ``p`` (Fast-dLLM v2, SDAR,
      Dream, NBDiff); ``"n2"`` drops it (BD3-LM ``_nucleus_sample``). The top token is always
      kept. Ties in probability are ordered by lower token id.

  Returns:
    Logits with dropped tokens set to ``-inf`` (renormalise with a softmax).
  """
  if p >= 1.0:
    return logits
  probs = jax.nn.softmax(logits, axis=-1)
  order = jnp.argsort(-probs, axis=-1, stable=True)
  sorted_p = jnp.take_along_axis(probs, order, axis=-1)
  cum = jnp.cumsum(sorted_p, axis=-1)
  if mode == "n1":
    keep_sorted = (cum - sorted_p) <= p  # drop token k iff c_{k-1} > p
  else:
    keep_sorted = cum <= p
  keep_sorted = keep_sorted.at[..., 0].set(True)
  keep = jnp.take_along_axis(keep_sorted, jnp.argsort(order, axis=-1), axis=-1)
  return jnp.where(keep, logits, -jnp.inf)


def sampling_logits(logits: jax.Array, temperature: float = 0.0, top_k: int = 0,
                    top_p: float = 1.0, nucleus_mode: str = "n1",
                    filter_order: str = "k_then_p") -> jax.Array:
  """Tempered, filtered logits whose softmax is the sampling distribution.

  Order is ``T -> top-k -> top-p`` (SDAR) or ``T -> top-p -> top-k`` (Dream/NBDiff). At
  ``T = 0`` the filters apply to the un-tempered logits (Dream/NBDiff convention; Fast-dLLM v2
  uses the unfiltered softmax at ``T = 0``: reproduce it with ``top_p = 1``).
  """
  z = logits / temperature if temperature > 0 else logits
  if filter_order == "k_then_p":
    return top_p_filter(top_k_filter(z, top_k), top_p, nucleus_mode)
  return top_k_filter(top_p_filter(z, top_p, nucleus_mode), top_k)


def sample_tokens(filtered: jax.Array, rng_keys: jax.Array, temperature: float) -> jax.Array:
  """Greedy (``T = 0``) or categorical tokens ``[b, L]`` from filtered logits ``[b, L, V]``.

  The categorical draw is the Gumbel-max trick in its additive form ``argmax(z/T + g)``
  (``jax.random.categorical``, float32), one key per row. LLaDA (ML-GSAI/LLaDA ``generate.py``)
  writes the same draw multiplicatively, ``exp(z) / (-log u)^T``, in float64; the additive form
  cannot overflow.
  """
  if temperature <= 0:
    return jnp.argmax(filtered, axis=-1).astype(jnp.int32)
  draw = jax.vmap(lambda k, z: jax.random.categorical(k, z, axis=-1))
  return draw(row_keys(rng_keys, SALT_TOKENS), filtered).astype(jnp.int32)


def propose(logits: jax.Array, rng_keys: jax.Array, temperature: float = 0.0,
            top_k: int = 0, top_p: float = 1.0, nucleus_mode: str = "n1",
            filter_order: str = "k_then_p") -> tuple[jax.Array, jax.Array]:
  """Proposal ``x̂`` and its probability under the sampling distribution.

  Args:
    logits: ``[b, L, V]`` float32.
    rng_keys: ``[b]`` per-row keys (unused at ``temperature = 0``).
    temperature: 0 = argmax.
    top_k: top-k filter (``<= 0`` off).
    top_p: nucleus mass (``>= 1`` off).
    nucleus_mode: ``"n1"`` or ``"n2"`` (see ``top_p_filter``).
    filter_order: ``"k_then_p"`` (SDAR) or ``"p_then_k"`` (Dream/NBDiff).

  Returns:
    ``(tokens [b, L] int32, prob [b, L] float32)``.
  """
  filtered = sampling_logits(logits, temperature, top_k, top_p, nucleus_mode, filter_order)
  tokens = sample_tokens(filtered, rng_keys, temperature)
  probs = jax.nn.softmax(filtered, axis=-1)
  return tokens, token_prob(probs, tokens)


def token_prob(probs: jax.Array, tokens: jax.Array) -> jax.Array:
  """``probs[b, l, tokens[b, l]]`` as ``[b, L]``."""
  return jnp.take_along_axis(probs, tokens[..., None], axis=-1)[..., 0]


def neg_entropy(probs: jax.Array) -> jax.Array:
  """``sum_v p_v log p_v`` ``[b, L]``; zero-probability (filtered) tokens contribute 0."""
  safe = jnp.where(probs > 0, probs, 1.0)
  return jnp.sum(jnp.where(probs > 0, probs * jnp.log(safe), 0.0), axis=-1)


def confidence(probs: jax.Array, tokens: jax.Array, kind: str,
               rng_keys: jax.Array) -> jax.Array:
  """Per-position score ``c`` (larger = more confident) from a distribution ``probs [b, L, V]``.

  Args:
    probs: raw ``softmax(z)`` or the sampling distribution (``confidence_from``).
    tokens: proposals ``[b, L]``.
    kind: ``"prob"`` (``p(x̂)``), ``"margin"`` (``p_(1) - p_(2)``), ``"neg_entropy"``
      (``sum p log p``) or ``"random"`` (``U(0, 1)`` per row key).
    rng_keys: ``[b]`` per-row keys (used by ``"random"`` only).

  Returns:
    ``[b, L]`` float32, larger = more confident.
  """
  if kind == "prob":
    return token_prob(probs, tokens)
  if kind == "margin":
    top2 = jax.lax.top_k(probs, 2)[0]
    return top2[..., 0] - top2[..., 1]
  if kind == "neg_entropy":
    return neg_entropy(probs)
  if kind == "random":
    return row_uniform(row_keys(rng_keys, SALT_SCORE), tokens.shape[1:])
  raise ValueError(f"unknown confidence kind {kind!r}; valid: {CONFIDENCE_KINDS}")


# ------------------------------------------------------------------------------------------
# Fixed-shape selection primitives: TOPK, TOP1, THR, PREFIX on [b, L] scores


def _sort_key(score: jax.Array, cand: jax.Array) -> jax.Array:
  # Candidates scored -inf or NaN (e.g. a suppressed EOS) must still sort before every
  # non-candidate, so clamp them to the lowest finite value and send non-candidates to -inf.
  finite = jnp.nan_to_num(score.astype(jnp.float32), nan=-jnp.inf)
  lowest = jnp.finfo(jnp.float32).min
  return jnp.where(cand, jnp.maximum(finite, lowest), -jnp.inf)


def rank_candidates(score: jax.Array, cand: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Descending stable order of candidates.

  Returns:
    ``(order [b, L], rank [b, L])``: ``order[:, j]`` is the position at sorted place ``j``,
    ``rank[:, i]`` is the sorted place of position ``i`` (its inverse permutation).
  """
  order = jnp.argsort(-_sort_key(score, cand), axis=-1, stable=True)
  return order, jnp.argsort(order, axis=-1)


def count(mask: jax.Array) -> jax.Array:
  """Number of True per row, ``[b]`` int32."""
  return jnp.sum(mask, axis=-1, dtype=jnp.int32)


def topk_mask(score: jax.Array, cand: jax.Array, k: jax.Array | int) -> jax.Array:
  """``TOPK(k)``: the ``min(k, n_cand)`` best candidates; ``k`` scalar or per-row ``[b]``."""
  _, rank = rank_candidates(score, cand)
  k = jnp.minimum(jnp.asarray(k, jnp.int32), count(cand))
  return cand & (rank < jnp.reshape(k, (-1, 1)))


def top1_mask(score: jax.Array, cand: jax.Array) -> jax.Array:
  """``TOP1``: the best candidate (lowest position on ties); empty when no candidate."""
  return topk_mask(score, cand, 1)


def threshold_mask(score: jax.Array, cand: jax.Array, tau: jax.Array | float,
                   strict: bool = False) -> jax.Array:
  """``THR(tau)``: candidates with ``score > tau`` (strict) or ``>= tau``; tau scalar or [b]."""
  tau = jnp.reshape(jnp.asarray(tau, jnp.float32), (-1, 1))
  return cand & ((score > tau) if strict else (score >= tau))


def prefix_mask(score: jax.Array, cand: jax.Array,
                ok_fn: Callable[[jax.Array, jax.Array], jax.Array]) -> jax.Array:
  """``PREFIX(f)``: the longest sorted prefix of candidates passing a test.

  Args:
    score: ``[b, L]``.
    cand: ``[b, L]`` bool.
    ok_fn: ``f(j, sorted_score) -> [b, L] bool`` where ``j`` is the 0-based sorted place
      ``[1, L]`` and ``sorted_score`` the scores in descending candidate order (candidates
      first), so ``f`` may use cumulative quantities along the sorted axis.

  Returns:
    ``[b, L]`` bool: ``cand & (rank < n)`` with ``n`` the length of the passing prefix.
  """
  order, rank = rank_candidates(score, cand)
  sorted_score = jnp.take_along_axis(score, order, axis=-1)
  j = jnp.arange(score.shape[-1], dtype=jnp.int32)[None, :]
  ok = ok_fn(j, sorted_score) & (j < count(cand)[:, None])
  n = jnp.sum(jnp.cumprod(ok.astype(jnp.int32), axis=-1), axis=-1)
  return cand & (rank < n[:, None])


def ensure_progress(commit: jax.Array, score: jax.Array, cand: jax.Array) -> jax.Array:
  """``S | (TOP1 & ~any(S))``: never stall a row that still has candidates."""
  stalled = ~jnp.any(commit, axis=-1, keepdims=True)
  return commit | (top1_mask(score, cand) & stalled)


def leftmost_masks(cand: jax.Array, n: jax.Array | int) -> jax.Array:
  """The first ``n`` candidates by position (``n`` scalar or ``[b]``)."""
  rank = jnp.cumsum(cand, axis=-1, dtype=jnp.int32) - 1
  return cand & (rank < jnp.reshape(jnp.asarray(n, jnp.int32), (-1, 1)))
