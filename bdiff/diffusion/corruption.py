"""The forward (noising) process: diffusion times and masks (BD3-LM, arXiv 2503.09573).

Everything here is a pure, fixed-shape ``jnp`` function of explicit PRNG keys, so it runs
inside the jitted train step. Under ``jax.jit`` with a sharded batch the arrays are the
*global* batch, so antithetic strata span all devices (a bdiff choice), unlike the per-device
strata of the Lightning reference.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.scipy.special import gammaln, xlogy

from bdiff import masks
from bdiff.diffusion.schedules import Schedule

# bd3lms' default lower clip; a lower bound at (or below) it means "no lower bound".
DEFAULT_CLIP_MIN = 1e-3
# Slack for k/B window tests: 0.3 * 10 is 3.0000001 in float32 and must still count as 3.
_COUNT_TOL = 1e-5


def sample_t(rng, batch: int, num_blocks: int, *, antithetic: bool, eps_min, eps_max,
             per_block_t: bool = True):
  """Diffusion times, one per (sequence, block) (BD3-LM) or per sequence (MDLM/MD4/LLaDA).

  Rules (kuleshov-group/bd3lms diffusion.py ``_sample_t``; arXiv 2503.09573):
  antithetic strata ``t_j = (u_j + j) / N`` with ``N = batch·num_blocks`` in row-major
  (sequence, block) order (``N = batch`` without ``per_block_t``, as in mdlm), then the clip
  ``t ← ε_min + t(ε_max − ε_min)`` (BD3-LM's clipped schedule); ``ε_min ≥ 1 and ε_max ≥ 1``
  gives ``t ≡ 1``.

  Args:
    rng: PRNG key.
    batch: number of sequences (the global batch inside a jitted step).
    num_blocks: K = n / B.
    antithetic: stratify over the batch (low-discrepancy, lower-variance loss).
    eps_min, eps_max: clip window (Python floats or traced scalars, e.g. from train state).
    per_block_t: one t per block; False broadcasts one t per sequence over its blocks.

  Returns:
    t: [batch, num_blocks] float32.
  """
  n_strata = batch * num_blocks if per_block_t else batch
  u = jax.random.uniform(rng, (n_strata,), jnp.float32)
  if antithetic:
    j = jnp.arange(n_strata, dtype=jnp.float32)
    # j/N + u/N instead of (u + j)/N keeps u's precision for large N; the nextafter clamp keeps
    # rounding from pushing a draw onto the next stratum's left edge.
    t = j / n_strata + u / n_strata
    t = jnp.minimum(t, jnp.nextafter((j + 1) / n_strata, jnp.float32(0)))
  else:
    t = u
  t = t.reshape(batch, -1)
  t = jnp.broadcast_to(t, (batch, num_blocks))
  return clip_t(t, eps_min, eps_max)


def clip_t(t, eps_min, eps_max):
  """``t ← ε_min + t(ε_max − ε_min)``, and ``t ≡ 1`` when both bounds are ≥ 1 (BD3-LM clipping)."""
  clipped = eps_min + t * (eps_max - eps_min)
  all_masked = jnp.logical_and(jnp.asarray(eps_min) >= 1, jnp.asarray(eps_max) >= 1)
  return jnp.where(all_masked, jnp.ones_like(t), clipped).astype(jnp.float32)


def resample_enforcement(eps_min, eps_max):
  """(enforce_lower, enforce_upper) for resampling to the window (ε_min, ε_max).

  bd3lms ``_resample_q_xt`` skips the lower bound when ε_min is its 1e-3 default and the upper
  one when ε_max = 1, by exact float equality, which breaks once a searched bound has passed
  through float32. bdiff decides by value instead: a lower bound at or below the 1e-3 floor
  (with float32 slack) and an upper bound at 1 are not enforced. Works on traced scalars.
  """
  lower = jnp.asarray(eps_min) > DEFAULT_CLIP_MIN * (1 + 1e-3)
  upper = jnp.asarray(eps_max) < 1 - 1e-6
  return lower, upper


def count_bounds(num_eligible, eps_min, eps_max, enforce_lower, enforce_upper):
  """Inclusive masked-count range [k_lo, k_hi] with ε_min ≤ k/n_e ≤ ε_max.

  Args:
    num_eligible: eligible tokens per block (array or int), the "B" of the window test.
    eps_min, eps_max: window.
    enforce_lower, enforce_upper: which bounds apply (see ``resample_enforcement``).

  Returns:
    (k_lo, k_hi) int32 arrays shaped like ``num_eligible``; empty when k_lo > k_hi.
  """
  n = jnp.asarray(num_eligible, jnp.float32)
  k_lo = jnp.where(enforce_lower, jnp.ceil(n * eps_min - _COUNT_TOL), 0.0)
  k_hi = jnp.where(enforce_upper, jnp.floor(n * eps_max + _COUNT_TOL), n)
  return jnp.maximum(k_lo, 0).astype(jnp.int32), jnp.minimum(k_hi, n).astype(jnp.int32)


def check_clip_window(block_size: int, eps_min: float, eps_max: float, enforce_lower=None,
                      enforce_upper=None):
  """Raises if resampling to (ε_min, ε_max) has no achievable masked fraction k/B.

  The bd3lms rejection loop never terminates on such windows; bdiff rejects
  them at config time, and a clip search should drop them before evaluating. Enforcement flags
  default to ``resample_enforcement``.
  """
  with jax.ensure_compile_time_eval():  # concrete even when called while tracing a step
    lower, upper = resample_enforcement(eps_min, eps_max)
    lower = lower if enforce_lower is None else enforce_lower
    upper = upper if enforce_upper is None else enforce_upper
    k_lo, k_hi = count_bounds(block_size, eps_min, eps_max, lower, upper)
  if int(k_lo) > int(k_hi):
    raise ValueError(
        f"diffusion.clip_min/diffusion.clip_max: window [{eps_min}, {eps_max}] contains no "
        f"masked fraction k/{block_size} for block_size {block_size}; widen the window")


def token_blocks(positions, block_size: int):
  """[b, n] index of the row block whose diffusion time each token uses.

  Without packing (``positions`` None) token i uses block ``i // B``. In packed rows
  ``positions`` restart at every document, a document's blocks start at its first token, and
  the block beginning at row index s draws the time of row block ``s // B``: every block keeps
  one t, uniform on the clip window as in BD3-LM, and a document's blocks are scored exactly as
  if it were alone (two short blocks may share a draw, which changes the variance, not the
  expectation).
  """
  if positions is None:
    return None
  return masks.block_starts(positions.astype(jnp.int32), block_size) // block_size


def per_token(values_per_block, block_size: int, blocks=None):
  """[b, K] per-block values -> [b, n] per-token values (``blocks`` from :func:`token_blocks`)."""
  if blocks is None:
    return jnp.repeat(values_per_block, block_size, axis=1)
  return jnp.take_along_axis(values_per_block, blocks, axis=1)


def mask_tokens(rng, x0, t_blocks, block_size: int, mask_id: int, schedule: Schedule, *,
                eligible=None, resample: bool = False, eps_min=DEFAULT_CLIP_MIN, eps_max=1.0,
                enforce_lower=False, enforce_upper=False, blocks=None):
  """Absorbing-state corruption: each eligible token becomes MASK w.p. μ(t of its block).

  Masks where ``u < μ`` (LLaDA / Fast-dLLM v2 / SDAR; bd3lms uses ``≤``, equal in law). Blocks
  with ``t ≥ 1`` are fully masked (t = 1 is the end of the process even where the schedule
  keeps a floor, e.g. loglinear's μ(1) = 1 − ε; bd3lms masks everything for ε_min = 1).
  With ``resample`` the mask is drawn conditioned on the block's masked count lying in the
  window (see ``_window_mask``).

  Args:
    rng: PRNG key.
    x0: [b, n] int clean tokens.
    t_blocks: [b, K] diffusion time per block, K = n / block_size.
    block_size: B.
    mask_id: the MASK token id.
    schedule: the masking schedule.
    eligible: [b, n] bool, tokens that may be masked (False for prompt, BOS, padding).
    resample: condition each block's masked count on the clip window (bd3lms resample).
    eps_min, eps_max, enforce_lower, enforce_upper: the window and which bounds apply.
    blocks: optional [b, n] row block whose t each token uses (packed documents, see
      :func:`token_blocks`); not with ``resample``, whose count window is per row block.

  Returns:
    (xt [b, n] same dtype as x0, masked [b, n] bool).
  """
  b, n = x0.shape
  num_blocks = n // block_size
  eligible = jnp.ones((b, n), bool) if eligible is None else eligible.astype(bool)
  t_blocks = jnp.broadcast_to(t_blocks, (b, num_blocks))
  mu = schedule.mask_prob(t_blocks)  # [b, K]
  if resample:
    if blocks is not None:
      raise ValueError("diffusion.resample conditions masked counts per row block; it is not "
                       "defined for per-document blocks of packed rows (data.packing)")
    if all(isinstance(v, (bool, int, float)) for v in (eps_min, eps_max, enforce_lower,
                                                        enforce_upper)):
      check_clip_window(block_size, eps_min, eps_max, enforce_lower, enforce_upper)
    masked = _window_mask(rng, mu, eligible.reshape(b, num_blocks, block_size), eps_min,
                          eps_max, enforce_lower, enforce_upper).reshape(b, n)
  else:
    u = _flat_draw(jax.random.uniform, rng, (b, n))
    masked = u < per_token(mu, block_size, blocks)
  masked = (masked | per_token(t_blocks >= 1, block_size, blocks)) & eligible
  return apply_mask(x0, masked, mask_id), masked


def apply_mask(x0, masked, mask_id: int):
  """x_t: MASK where ``masked``, the clean token elsewhere."""
  return jnp.where(masked, jnp.asarray(mask_id, x0.dtype), x0)


def _flat_draw(sampler, rng, shape):
  """Draws ``sampler`` on a flat array and reshapes: the same law, but XLA:CPU compiles
  threefry over some rank-3 shapes (e.g. [250, 16, 9]) 20x slower than over a flat one."""
  return sampler(rng, (math.prod(shape),), jnp.float32).reshape(shape)


def _binomial_logpmf(k, n, p):
  """log Binomial(k; n, p) with exact 0·log 0 = 0, and −inf for k > n."""
  log_choose = gammaln(n + 1.0) - gammaln(k + 1.0) - gammaln(jnp.maximum(n - k, 0.0) + 1.0)
  logp = log_choose + xlogy(k, p) + xlogy(n - k, 1 - p)
  return jnp.where(k <= n, logp, -jnp.inf)


def _window_mask(rng, mu, eligible, eps_min, eps_max, enforce_lower, enforce_upper):
  """Fixed-shape exact equivalent of bd3lms' resample-until-in-window loop (derived here).

  Conditioning i.i.d. Bernoulli(μ) over the ``n_e`` eligible tokens of a block on the count
  lying in [k_lo, k_hi] gives (a) a Binomial(n_e, μ) count truncated to that range and (b) a
  uniformly random subset of that size. So: sample k from the truncated pmf (static size B+1),
  then mask the k eligible positions with the smallest i.i.d. uniform keys. No rejection loop.
  Blocks whose window holds no achievable count (possible only when eligibility shrinks n_e)
  fall back to the untruncated Binomial.

  Args:
    rng: PRNG key.
    mu: [b, K] masking probability per block.
    eligible: [b, K, B] bool.
    eps_min, eps_max, enforce_lower, enforce_upper: see ``count_bounds``.

  Returns:
    [b, K, B] bool mask (a subset of ``eligible``).
  """
  count_rng, key_rng = jax.random.split(rng)
  block_size = eligible.shape[-1]
  n_e = eligible.sum(-1).astype(jnp.float32)  # [b, K]
  k = jnp.arange(block_size + 1, dtype=jnp.float32)  # [B+1]
  logp = _binomial_logpmf(k, n_e[..., None], mu[..., None])  # [b, K, B+1]
  k_lo, k_hi = count_bounds(n_e, eps_min, eps_max, enforce_lower, enforce_upper)
  in_window = (k >= k_lo[..., None]) & (k <= k_hi[..., None]) & jnp.isfinite(logp)
  feasible = in_window.any(-1, keepdims=True)
  logits = jnp.where(feasible, jnp.where(in_window, logp, -jnp.inf), logp)
  # Gumbel-max = categorical sampling over k.
  count = jnp.argmax(logits + _flat_draw(jax.random.gumbel, count_rng, logits.shape), -1)
  keys = _flat_draw(jax.random.uniform, key_rng, eligible.shape)
  keys = jnp.where(eligible, keys, 2.0)  # ineligible tokens rank last, never chosen
  rank = jnp.argsort(jnp.argsort(keys, axis=-1), axis=-1)
  return (rank < count[..., None]) & eligible


def complementary_mask(masked, eligible=None):
  """Fast-dLLM v2 complementary copy: mask exactly the eligible tokens the first copy kept.

  With the original, every eligible token is supervised exactly once per pair
  (NVlabs/Fast-dLLM v2/README.md; arXiv 2509.26328).

  Args:
    masked: [b, n] bool mask of the first copy.
    eligible: [b, n] bool maskable tokens (default: all).

  Returns:
    [b, n] bool, ``eligible & ~masked``.
  """
  keep = ~masked
  return keep if eligible is None else keep & eligible.astype(bool)


def clip_window_is_achievable(block_size: int, eps_min: float, eps_max: float) -> bool:
  """True when resampling to (ε_min, ε_max) admits some masked count (for clip searches)."""
  try:
    check_clip_window(block_size, eps_min, eps_max)
  except ValueError:
    return False
  return True

