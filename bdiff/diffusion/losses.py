"""SUBS cross-entropy, weights, reductions, token shift, aux AR loss and NELBO metrics.

SUBS and the ELBO weights follow MDLM (arXiv 2406.07524) and BD3-LM (arXiv 2503.09573); the
other options are cited where they are defined.

All functions are pure ``jnp`` on fixed shapes. Shapes: ``b`` batch, ``n`` length, ``V`` real
(non-MASK) vocabulary size.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from bdiff.diffusion.schedules import Schedule

WEIGHTINGS = ("elbo", "inv_p", "none", "unit_all_masked")
REDUCTIONS = ("token_mean", "labelled_mean", "answer_tokens", "sequence_sum", "llada_pretrain",
              "llada_sft")
NUM_T_BUCKETS = 4


def masked_cross_entropy(logits, targets, loss_mask):
  """Per-token SUBS cross-entropy, zero wherever ``loss_mask`` is False.

  SUBS (kuleshov-group/mdlm & bd3lms ``_subs_parameterization``) gives unmasked positions a
  point mass on their input, i.e. exactly zero loss, so the cross-entropy is computed at masked
  positions only. The head outputs the V real tokens (MASK id = V is not an output, as in
  google/init2winit ``mdlm_rope_nanodo.py``), which is "never predict MASK" by construction.
  Unselected rows are replaced by zeros *before* the log-softmax, so neither the value nor the
  gradient can meet 0·∞ even if a caller feeds −inf logits there.

  Args:
    logits: [b, n, V] any float dtype; the log-softmax runs in float32.
    targets: [b, n] int clean tokens (ids outside [0, V) allowed where ``loss_mask`` is False).
    loss_mask: [b, n] bool.

  Returns:
    [b, n] float32 cross-entropy (nats).
  """
  logits = jnp.where(loss_mask[..., None], logits.astype(jnp.float32), 0.0)
  safe_targets = jnp.where(loss_mask, targets, 0).astype(jnp.int32)
  target_logit = jnp.take_along_axis(logits, safe_targets[..., None], axis=-1)[..., 0]
  ce = jax.nn.logsumexp(logits, axis=-1) - target_logit
  return jnp.where(loss_mask, ce, 0.0)


def shift_logits(logits, clean_logits=None, block_first=None):
  """Token shift (Fast-dLLM v2, arXiv 2509.26328): target i is read from output i − 1.

  Returns ``z'`` with ``z'[i] = z[i−1]`` and ``z'[0] = z[0]``, the same right shift the
  sampler applies within a block. Position 0 has no predictor, so callers never supervise it
  (the objective makes it ineligible for masking).

  The first token of block b is then predicted from the *noisy* last token of block b−1
  (Fast-dLLM v2's training), while the sampler predicts it from the clean commit pass of block
  b−1. With ``clean_logits`` and ``block_first`` given, block-initial targets are read from
  the clean stream's output i − 1 instead (``diffusion.shift_from_clean``), so training
  matches sampling. At block size 1 every token is block-initial and the noisy rule would
  predict token i from a [MASK] at i − 1, i.e. two tokens ahead of the context, so there the
  objective always uses the clean stream: the result is exactly next-token AR training.

  Args:
    logits: [b, n, V] noisy-stream logits.
    clean_logits: [b, n, V] clean-stream logits, or None.
    block_first: [b, n] bool, True at each block's first position (with ``clean_logits``).

  Returns:
    [b, n, V].
  """
  shifted = jnp.concatenate([logits[:, :1], logits[:, :-1]], axis=1)
  if block_first is None:
    return shifted
  clean = jnp.concatenate([clean_logits[:, :1], clean_logits[:, :-1]], axis=1)
  return jnp.where(block_first[..., None], clean.astype(shifted.dtype), shifted)


def loss_weights(weighting: str, schedule: Schedule, t, *, complement: bool = False):
  """Per-token loss weight from each token's diffusion time.

  ``elbo``: w(t) = −α'/(1−α) (BD3-LM, MDLM, MD4); ``inv_p``: 1/μ(t) of the configured
  schedule, which with ``linear_floor`` is LLaDA/SDAR's weight; ``none``: 1 (Fast-dLLM v2);
  ``unit_all_masked``: 1, meant for t ≡ 1 (BD3-LM's AR-equivalent setting).

  Args:
    weighting: one of ``WEIGHTINGS``.
    schedule: the masking schedule.
    t: [...] diffusion times.
    complement: weights for the complementary copy, whose masking probability is 1 − μ(t);
      only ``inv_p`` / ``none`` / ``unit_all_masked`` are defined for it.

  Returns:
    [...] float32 weights.
  """
  if weighting not in WEIGHTINGS:
    raise ValueError(f"diffusion.weighting must be one of {WEIGHTINGS}, got {weighting!r}")
  t = jnp.asarray(t, jnp.float32)
  if weighting in ("none", "unit_all_masked"):
    return jnp.ones_like(t)
  if weighting == "inv_p":
    mu = schedule.mask_prob(t)
    return 1 / (1 - mu) if complement else 1 / mu
  if complement:
    raise ValueError("diffusion.weighting 'elbo' is undefined for complementary copies "
                     "(diffusion.complementary_mask); use 'none' or 'inv_p'")
  return schedule.elbo_weight(t)


def reduce_loss(term, reduction: str, *, valid, loss_mask, eligible):
  """Reduces per-token weighted terms (zero off ``loss_mask``) to a scalar.

  ``token_mean``: Σ term / Σ valid (BD3-LM/MDLM); ``labelled_mean``: Σ term / Σ loss_mask
  (Fast-dLLM v2); ``answer_tokens``: Σ term / Σ eligible (SDAR); ``sequence_sum``: mean over
  sequences of Σ term (MD4); ``llada_pretrain``: Σ term / (b·n) (LLaDA GUIDELINES.md; its 1%
  random-length cropping is a data-side option, not done here); ``llada_sft``: mean over
  sequences of Σ term / answer length.

  Args:
    term: [b, n] float32 weighted cross-entropy.
    reduction: one of ``REDUCTIONS``.
    valid: [b, n] bool non-padding tokens.
    loss_mask: [b, n] bool supervised positions.
    eligible: [b, n] bool maskable (answer) tokens.

  Returns:
    scalar float32.
  """
  if reduction not in REDUCTIONS:
    raise ValueError(f"diffusion.reduction must be one of {REDUCTIONS}, got {reduction!r}")
  if reduction in ("sequence_sum", "llada_sft"):
    per_seq = term.sum(-1)
    if reduction == "llada_sft":
      per_seq = per_seq / jnp.maximum(eligible.sum(-1), 1)
    return per_seq.mean()
  denominator = {"token_mean": valid, "labelled_mean": loss_mask, "answer_tokens": eligible,
                 "llada_pretrain": jnp.ones_like(valid)}[reduction]
  return term.sum() / jnp.maximum(denominator.sum(), 1)


def autoregressive_loss(clean_logits, x0, valid, targets=None):
  """Auxiliary next-token loss on the clean stream (NBDiff-style adaptation).

  Under the context-causal training mask the clean stream is the original AR computation, so
  its output at position ℓ predicts ``x0[ℓ+1]`` (arXiv 2512.06776; weight and normalisation are
  a bdiff choice: mean over valid (input, target) pairs).

  Args:
    clean_logits: [b, n, V] clean-stream logits.
    x0: [b, n] clean tokens.
    valid: [b, n] bool.
    targets: [b, n] bool tokens that may be targets (default ``valid``): the SFT answer, so
      the auxiliary loss, like the diffusion loss, never trains on prompts.

  Returns:
    scalar float32 mean next-token cross-entropy (nats).
  """
  targets = valid if targets is None else targets & valid
  pairs = valid[:, :-1] & targets[:, 1:]
  ce = masked_cross_entropy(clean_logits[:, :-1], x0[:, 1:], pairs)
  return ce.sum() / jnp.maximum(pairs.sum(), 1)


def t_bucket_losses(ce, loss_mask, t, num_buckets: int = NUM_T_BUCKETS) -> dict:
  """Unweighted masked CE per diffusion-time bucket [k/N, (k+1)/N) (kuleshov-group/bd3lms#25).

  The 1/t-weighted loss is hard to read (it looks like an AR curve); per-t CE shows where the
  model improves. Empty buckets report 0.

  Args:
    ce: [b, n] cross-entropy (0 off ``loss_mask``).
    loss_mask: [b, n] bool.
    t: [b, n] per-token diffusion time.
    num_buckets: number of equal-width buckets over [0, 1].

  Returns:
    {"ce_t{k}": scalar} for k in range(num_buckets).
  """
  bucket = jnp.clip(jnp.floor(t * num_buckets), 0, num_buckets - 1).astype(jnp.int32)
  one_hot = jax.nn.one_hot(bucket, num_buckets, dtype=jnp.float32) * loss_mask[..., None]
  sums = jnp.einsum("bn,bnk->k", ce, one_hot)
  counts = one_hot.sum((0, 1))
  means = sums / jnp.maximum(counts, 1)
  return {f"ce_t{k}": means[k] for k in range(num_buckets)}


def summarize_nelbo(nll_sum, count) -> dict:
  """NELBO summary from aggregated sums (bd3lms ``metrics.py``).

  Args:
    nll_sum: total weighted NLL (nats) over all evaluated tokens, summed over batches/hosts.
    count: number of evaluated tokens.

  Returns:
    {"nll": nats/token, "bits_per_token": nll / ln 2, "ppl_bound": exp(nll)} — the perplexity
    is an upper bound (report it with "≤"), exact for B = 1 with t ≡ 1.
  """
  nll = jnp.asarray(nll_sum, jnp.float32) / jnp.maximum(jnp.asarray(count, jnp.float32), 1)
  return {"nll": nll, "bits_per_token": nll / math.log(2.0), "ppl_bound": jnp.exp(nll)}
