"""The block diffusion training objective and NELBO evaluation (BD3-LM, arXiv 2503.09573).

Model-agnostic: the trainer supplies the two-stream forward as a ``logits_fn``::

  logits_fn(xt [b, n] int32, x0 [b, n] int32, want_clean: bool, **kw)
      -> (noisy_logits [b, n, V], clean_logits [b, n, V] or None)

called with the keyword ``want_clean`` (True only when the auxiliary AR loss needs the clean
stream) and, when ``time_conditioning`` is on, the keyword ``t`` ([b, n] float32 per-token
diffusion time). It builds ``[x_t ; x_0]`` with the BD3 two-stream mask. The MASK id defaults to V
(the head's output width, read with ``jax.eval_shape``, so no extra compute).

One code path covers the family: ``block_size = 1`` with t ≡ 1 (clip 1, 1) and unit weights is
AR teacher forcing; ``block_size = n`` is MDLM.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections

from bdiff.diffusion import corruption
from bdiff.diffusion import curriculum
from bdiff.diffusion import losses
from bdiff.diffusion.schedules import Schedule, get_schedule

LogitsFn = Callable[..., tuple]

_BOOL_KEYS = ("per_block_t", "antithetic", "resample", "token_shift", "shift_from_clean",
              "complementary_mask", "ignore_bos", "context_causal", "time_conditioning")


def default_diffusion_config() -> ml_collections.ConfigDict:
  """The ``diffusion`` config section with bdiff defaults (BD3-LM recipe, kuleshov-group/bd3lms)."""
  return ml_collections.ConfigDict(dict(
      block_size=16,  # B; B = 1 is AR, B = seq_len is MDLM.
      schedule="loglinear",  # see schedules.SCHEDULE_NAMES
      eps=1e-3,  # the schedule's ε
      weighting="elbo",  # losses.WEIGHTINGS
      reduction="token_mean",  # losses.REDUCTIONS
      per_block_t=True,  # one t per (sequence, block) as BD3-LM; False: per sequence
      antithetic=True,  # strata over the GLOBAL batch (a bdiff choice)
      clip_min=1e-3,  # clip window (ε_min, ε_max) of t; (1, 1) means t ≡ 1
      clip_max=1.0,
      resample=False,  # condition block mask counts on the clip window (bd3lms resample)
      token_shift=False,  # Fast-dLLM v2: target i read from output i−1
      shift_from_clean=False,  # under token shift, a block's first target is read from the
                               # CLEAN stream's output i−1, as the sampler predicts it (its
                               # commit pass); False reads the noisy one (Fast-dLLM v2's
                               # training). Always on at block_size 1 (see losses.shift_logits)
      complementary_mask=False,  # Fast-dLLM v2: add the complementary copy
      ignore_bos=False,  # never mask token 0; excluded from the NELBO token count
      aux_ar_weight=0.0,  # λ of the clean-stream next-token loss (NBDiff-style)
      context_causal=False,  # NBDiff token-causal clean stream (read by the model)
      time_conditioning=False,  # pass t to logits_fn (MD4); off for BD3-LM
      block_curriculum=[],  # [(start_step, B), ...] growing B (NBDiff); [] = off; see curriculum
  ))


def validate_diffusion_config(cfg, seq_len: int) -> None:
  """Fails early, naming the offending ``diffusion.*`` key.

  Raises:
    ValueError: on a missing key, a bad value or an inconsistent combination.
  """
  for key in default_diffusion_config():
    if key not in cfg:
      raise ValueError(f"diffusion.{key} is missing from the config")
  bs = cfg.block_size
  if not isinstance(bs, int) or bs < 1 or seq_len % bs:
    raise ValueError(f"diffusion.block_size must be a positive int dividing seq_len={seq_len}, "
                     f"got {bs!r}")
  get_schedule(cfg.schedule, cfg.eps)
  if cfg.weighting not in losses.WEIGHTINGS:
    raise ValueError(f"diffusion.weighting must be one of {losses.WEIGHTINGS}, "
                     f"got {cfg.weighting!r}")
  if cfg.reduction not in losses.REDUCTIONS:
    raise ValueError(f"diffusion.reduction must be one of {losses.REDUCTIONS}, "
                     f"got {cfg.reduction!r}")
  for key in _BOOL_KEYS:
    if not isinstance(cfg[key], bool):
      raise ValueError(f"diffusion.{key} must be a bool, got {cfg[key]!r}")
  if not 0.0 <= cfg.clip_min <= 1.0:
    raise ValueError(f"diffusion.clip_min must lie in [0, 1], got {cfg.clip_min}")
  if not cfg.clip_min <= cfg.clip_max <= 1.0:
    raise ValueError(f"diffusion.clip_max must lie in [clip_min, 1], got {cfg.clip_max}")
  if cfg.weighting == "unit_all_masked" and not cfg.clip_min == cfg.clip_max == 1.0:
    raise ValueError("diffusion.weighting 'unit_all_masked' needs t ≡ 1: set "
                     "diffusion.clip_min = diffusion.clip_max = 1")
  curriculum.check_block_curriculum(cfg.block_curriculum, bs, seq_len)
  if cfg.resample:
    for b in {bs, *(b for _, b in curriculum.stages(cfg.block_curriculum))}:
      corruption.check_clip_window(b, cfg.clip_min, cfg.clip_max)
  if cfg.complementary_mask and cfg.weighting == "elbo":
    raise ValueError("diffusion.complementary_mask needs diffusion.weighting 'none' or 'inv_p' "
                     "(the complement has no schedule time for the ELBO weight)")
  if cfg.complementary_mask and cfg.time_conditioning:
    raise ValueError("diffusion.time_conditioning is undefined for complementary copies "
                     "(diffusion.complementary_mask)")
  if not cfg.aux_ar_weight >= 0.0:
    raise ValueError(f"diffusion.aux_ar_weight must be >= 0, got {cfg.aux_ar_weight}")


@dataclasses.dataclass(frozen=True)
class _Plan:
  """What one loss evaluation does; training reads it from the config, NELBO overrides it."""
  block_size: int
  schedule: Schedule
  weighting: str
  per_block_t: bool
  antithetic: bool
  resample: bool
  token_shift: bool
  clean_first: bool  # token shift reads block-initial targets from the clean stream
  complementary: bool
  protect_first: bool
  want_clean: bool
  time_conditioning: bool


def _plan(cfg) -> _Plan:
  return _Plan(block_size=cfg.block_size, schedule=get_schedule(cfg.schedule, cfg.eps),
               weighting=cfg.weighting, per_block_t=cfg.per_block_t,
               antithetic=cfg.antithetic, resample=cfg.resample,
               token_shift=cfg.token_shift, complementary=cfg.complementary_mask,
               clean_first=cfg.token_shift and (cfg.shift_from_clean or cfg.block_size == 1),
               # Under token shift position 0 has no predictor, so it is never masked.
               protect_first=cfg.ignore_bos or cfg.token_shift,
               want_clean=cfg.aux_ar_weight > 0, time_conditioning=cfg.time_conditioning)


class _Scored(NamedTuple):
  """Per-token results of one corrupted forward ([b', n]; b' = 2b with complementary copies)."""
  ce: jax.Array  # SUBS cross-entropy, 0 off loss_mask
  weight: jax.Array
  loss_mask: jax.Array  # masked & valid: supervised positions
  valid: jax.Array
  eligible: jax.Array
  t: jax.Array  # per-token diffusion time (1 − t for complementary copies, metrics only)
  x0: jax.Array
  clean_logits: jax.Array | None


def _call(logits_fn, xt, x0, plan: _Plan, t, want_clean: bool):
  kwargs = {"t": t} if plan.time_conditioning else {}
  return logits_fn(xt, x0, want_clean=want_clean, **kwargs)


def _masks(x0, valid, eligible, protect_first: bool, positions=None):
  b, n = x0.shape
  valid = jnp.ones((b, n), bool) if valid is None else valid.astype(bool)
  eligible = valid if eligible is None else eligible.astype(bool) & valid
  if protect_first:  # the first token of the row, or of every packed document
    first = (positions == 0) if positions is not None else jnp.arange(n) == 0
    eligible = eligible & ~first
  return valid, eligible


def _score(logits_fn, x0, rng, plan: _Plan, clip, valid, eligible, mask_id,
           positions=None) -> _Scored:
  """Draws t and the mask, runs the forward once and scores it with the SUBS cross-entropy.

  ``positions`` (packed documents) make every document's blocks start at its first token.
  """
  b, n = x0.shape
  bs = plan.block_size
  t_rng, mask_rng = jax.random.split(rng)
  eps_min, eps_max = clip
  t_blocks = corruption.sample_t(t_rng, b, n // bs, antithetic=plan.antithetic,
                                 eps_min=eps_min, eps_max=eps_max, per_block_t=plan.per_block_t)
  lower, upper = corruption.resample_enforcement(eps_min, eps_max)
  if mask_id is None:  # the head width: MASK = V; eval_shape traces, never computes
    mask_id = jax.eval_shape(
        lambda a: _call(logits_fn, a, a, plan, jnp.zeros(a.shape, jnp.float32), False)[0],
        x0).shape[-1]
  blocks = corruption.token_blocks(positions, bs)
  xt, masked = corruption.mask_tokens(
      mask_rng, x0, t_blocks, bs, mask_id, plan.schedule, eligible=eligible,
      resample=plan.resample, eps_min=eps_min, eps_max=eps_max, enforce_lower=lower,
      enforce_upper=upper, blocks=blocks)
  t = corruption.per_token(t_blocks, bs, blocks)  # [b, n]
  weight = losses.loss_weights(plan.weighting, plan.schedule, t)
  if plan.complementary:  # one forward over the doubled batch (Fast-dLLM v2)
    masked_c = corruption.complementary_mask(masked, eligible)
    xt = jnp.concatenate([xt, corruption.apply_mask(x0, masked_c, mask_id)])
    masked = jnp.concatenate([masked, masked_c])
    weight = jnp.concatenate(
        [weight, losses.loss_weights(plan.weighting, plan.schedule, t, complement=True)])
    t = jnp.concatenate([t, 1 - t])
    x0, valid, eligible = (jnp.concatenate([a, a]) for a in (x0, valid, eligible))
  logits, clean_logits = _call(logits_fn, xt, x0, plan, t,
                               plan.want_clean or plan.clean_first)
  if plan.token_shift:
    first = None
    if plan.clean_first:
      pos = jnp.arange(n)[None, :] if positions is None else positions
      first = jnp.broadcast_to(pos % bs == 0, (b, n))
      first = jnp.concatenate([first, first]) if plan.complementary else first
    logits = losses.shift_logits(logits, clean_logits, first)
  loss_mask = masked & valid
  ce = losses.masked_cross_entropy(logits, x0, loss_mask)
  return _Scored(ce, weight, loss_mask, valid, eligible, t, x0, clean_logits)


def training_loss(logits_fn: LogitsFn, x0, rng, cfg, *, valid=None, eligible=None,
                  mask_id: int | None = None, clip=None, positions=None):
  """The diffusion training loss of one batch and its metrics (see docs/training.md).

  Args:
    logits_fn: two-stream forward (module docstring).
    x0: [b, n] int32 clean tokens (the global batch inside a jitted step).
    rng: PRNG key for t and the mask.
    cfg: the ``diffusion`` ConfigDict (``default_diffusion_config`` keys).
    valid: [b, n] bool non-padding tokens (default all).
    eligible: [b, n] bool maskable tokens, e.g. answers in SFT (default ``valid``).
    mask_id: MASK token id (default: the logits' V).
    clip: optional (ε_min, ε_max), possibly traced (a searched window kept in the train
      state); default (cfg.clip_min, cfg.clip_max).
    positions: optional [b, n] positions within packed documents (restarting at 0 at each):
      blocks, and the protected first token, then count from each document's start; the
      ``logits_fn`` must apply the matching per-document mask.

  Returns:
    (loss scalar, metrics dict of scalars): ``loss`` (total), ``diffusion_loss`` (weighted,
    reduced), ``masked_ce`` (unweighted mean CE over supervised tokens), ``masked_fraction``,
    ``ce_t{k}`` per t bucket, ``ar_loss`` when λ > 0, and for ``token_mean`` with ELBO-type
    weights ``bits_per_token`` / ``ppl_bound`` (biased unless the window is (1e-3, 1)).
  """
  validate_diffusion_config(cfg, x0.shape[1])
  plan = _plan(cfg)
  if positions is not None and plan.want_clean:
    raise ValueError("diffusion.aux_ar_weight > 0 is not supported on packed documents "
                     "(data.packing='documents'): its next-token pairs would cross documents")
  valid, eligible = _masks(x0, valid, eligible, plan.protect_first, positions)
  clip = (cfg.clip_min, cfg.clip_max) if clip is None else clip
  s = _score(logits_fn, x0, rng, plan, clip, valid, eligible, mask_id, positions)
  diffusion_loss = losses.reduce_loss(s.weight * s.ce, cfg.reduction, valid=s.valid,
                                      loss_mask=s.loss_mask, eligible=s.eligible)
  n_sup = s.loss_mask.sum()
  metrics = {
      "diffusion_loss": diffusion_loss,
      "masked_ce": s.ce.sum() / jnp.maximum(n_sup, 1),
      "masked_fraction": n_sup / jnp.maximum((s.eligible & s.valid).sum(), 1),
      **losses.t_bucket_losses(s.ce, s.loss_mask, s.t),
  }
  if cfg.reduction == "token_mean" and cfg.weighting in ("elbo", "unit_all_masked"):
    summary = losses.summarize_nelbo(diffusion_loss, 1)
    metrics.update(bits_per_token=summary["bits_per_token"], ppl_bound=summary["ppl_bound"])
  loss = diffusion_loss
  if plan.want_clean:
    ar = losses.autoregressive_loss(s.clean_logits, s.x0, s.valid, s.eligible)
    metrics["ar_loss"] = ar
    loss = loss + cfg.aux_ar_weight * ar
  metrics["loss"] = loss
  return loss, metrics


def nelbo(logits_fn: LogitsFn, x0, rng, cfg, *, valid=None, scored=None,
          mask_id: int | None = None, positions=None) -> dict:
  """One-draw NELBO sums for held-out evaluation (bd3lms ``_check_val_sampling_intvl``).

  Always the unclipped window t ∈ [1e-3, 1] with ELBO weights and antithetic strata, no
  resampling, no complementary copy; for ``block_size = 1``, t ≡ 1 with unit weight, i.e. the
  exact AR NLL. BOS (``ignore_bos``) and, under token shift, position 0 are neither masked
  nor counted. Sums, so callers aggregate over batches and hosts before ``summarize_nelbo``.

  Args:
    logits_fn: two-stream forward (module docstring).
    x0: [b, n] int32 clean tokens.
    rng: PRNG key.
    cfg: the ``diffusion`` ConfigDict.
    valid: [b, n] bool non-padding tokens (default all).
    scored: optional [b, n] bool subset of the evaluated tokens whose terms are also summed
      separately (e.g. an SFT answer without its EOS padding): the noise is drawn over all
      evaluated tokens as in training, only the reporting is restricted.
    mask_id: MASK token id (default: the logits' V).
    positions: optional [b, n] positions within packed documents (see ``training_loss``).

  Returns:
    {"nll_sum": scalar float32 nats, "token_count": scalar int32}, plus "scored_nll_sum" and
    "scored_token_count" when ``scored`` is given.
  """
  validate_diffusion_config(cfg, x0.shape[1])
  ar = cfg.block_size == 1
  plan = dataclasses.replace(
      _plan(cfg), weighting="unit_all_masked" if ar else "elbo", antithetic=True,
      resample=False, complementary=False, want_clean=False)
  valid, eligible = _masks(x0, valid, None, plan.protect_first, positions)
  clip = (1.0, 1.0) if ar else (corruption.DEFAULT_CLIP_MIN, 1.0)
  s = _score(logits_fn, x0, rng, plan, clip, valid, eligible, mask_id, positions)
  terms = s.weight * s.ce
  out = {"nll_sum": terms.sum(), "token_count": eligible.sum().astype(jnp.int32)}
  if scored is not None:
    scored = scored.astype(bool) & eligible
    out["scored_nll_sum"] = jnp.where(scored, terms, 0.0).sum()
    out["scored_token_count"] = scored.sum().astype(jnp.int32)
  return out

