"""Strategies with a per-block step budget or a fixed order.

LLaDA / SDAR static schedules, SDAR sequential and dynamic, Dream's schedule, Prophet's early
commit, ancestral sampling (MD4 / MDLM / BD3-LM) and BD3-LM's first-hitting sampler.

Rules have the registry signature ``rule(cfg, inp, state) -> (commit, tokens, state)`` with
``inp`` a ``types.StepInputs``; ``strategies.select`` intersects ``commit`` with the
candidates and adds the never-stall ``TOP1``. ``cfg.steps`` is the number of denoising steps
per block (0 = the block capacity ``L``, one token per step); the rules reset their state at
``step_in_block == 0``.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from bdiff.sampling import selection as sel
from bdiff.sampling.types import StepInputs, StrategyConfig

TIME_GRIDS = ("linear", "cosine")


def schedule_init(cfg: StrategyConfig, batch: int, length: int) -> dict:
  """``n0 [b]``: candidates at the block's first step (replaces the ``[R, S]`` k-table)."""
  del cfg, length
  return {"n0": jnp.zeros((batch,), jnp.int32)}


def steps_per_block(cfg: StrategyConfig, length: int) -> int:
  """``cfg.steps``, or the block capacity ``L`` when 0 (one token per step)."""
  return cfg.steps or length


def static_k(n0: jax.Array, step: jax.Array, steps: int) -> jax.Array:
  """LLaDA ``get_num_transfer_tokens``: ``k_s = N div S + [s < N mod S]``.

  ``N`` masked tokens over ``S`` steps, the first ``N mod S`` steps taking one extra
  (ML-GSAI/LLaDA ``generate.py``).

  Steps ``>= S`` (only reachable when the loop overruns the budget) take everything left.
  """
  k = n0 // steps + (step < n0 % steps).astype(jnp.int32)
  return jnp.where(step >= steps, n0, k)


def _schedule(cfg: StrategyConfig, inp: StepInputs, state: dict) -> tuple[jax.Array, dict]:
  n0 = jnp.where(inp.step == 0, sel.count(inp.cand), state["n0"])
  steps = steps_per_block(cfg, inp.cand.shape[-1])
  return static_k(n0, inp.step, steps), {**state, "n0": n0}


def static_rule(cfg: StrategyConfig, inp: StepInputs, state: dict):
  """LLaDA low-confidence / random remasking: ``TOPK(k_s)`` on a fixed schedule.

  Source: ML-GSAI/LLaDA ``generate.py`` (arXiv 2502.09992; raw scores); JetAstra/SDAR
  ``low_confidence_static`` (arXiv 2510.06303). ``cfg.confidence`` picks the score: ``prob`` =
  low_confidence, ``random`` = random remasking, ``margin`` / ``neg_entropy`` =
  ParallelBench's (furiosa-ai/ParallelBench, arXiv 2510.04767) topk_margin / entropy. ``N`` is
  the row's masked count at block start. Deviation [bdiff]: SDAR computes the table from the
  block size ``B``, which can pick non-masked positions when the prompt fills part of the
  first block; bdiff uses ``N`` with ``min(k_s, n_cand)``, which never does.
  """
  k, state = _schedule(cfg, inp, state)
  return sel.topk_mask(inp.score, inp.cand, k), inp.tokens, state


def sequential_rule(cfg: StrategyConfig, inp: StepInputs, state: dict):
  """SDAR ``sequential``: the ``k_s`` left-most masked positions (JetAstra/SDAR
  ``generate.py``, arXiv 2510.06303)."""
  k, state = _schedule(cfg, inp, state)
  return sel.leftmost_masks(inp.cand, k), inp.tokens, state


def sdar_dynamic_rule(cfg: StrategyConfig, inp: StepInputs, state: dict):
  """SDAR ``low_confidence_dynamic``: all ``c > τ`` if there are ``>= k_s``, else ``TOPK(k_s)``.

  Source: JetAstra/SDAR ``generate.py`` ``low_confidence_dynamic`` (arXiv 2510.06303):
  strict ``>`` and scores from the sampling distribution by default; reference ``τ = 0.85``
  in the script, 0.9 in its README and LMDeploy.
  """
  k, state = _schedule(cfg, inp, state)
  high = sel.threshold_mask(inp.score, inp.cand, cfg.threshold, bool(cfg.strict))
  enough = (sel.count(high) >= k)[:, None]
  return jnp.where(enough, high, sel.topk_mask(inp.score, inp.cand, k)), inp.tokens, state


def dream_rule(cfg: StrategyConfig, inp: StepInputs, state: dict):
  """Dream ``maskgit_plus`` / ``topk_margin`` / ``entropy``: ``TOPK(⌊N·(1 - s/t)⌋)``.

  Source: HKUNLP/Dream ``generation_utils.py`` (vendored in NVlabs/Fast-dLLM
  ``dream/model/generation_utils.py``): grid ``t_i = linspace(1, ε, S+1)``, ε = 1e-3,
  ``N`` = the row's current masked count (the reference averages it over the batch; bdiff per
  row), everything at the last step. ``cfg.confidence`` = ``prob`` (maskgit_plus), ``margin``
  (topk_margin) or ``neg_entropy`` (entropy). Reference conventions (the defaults here):
  scores from the sampling distribution, filters in the order top-p then top-k.
  Not implemented: ``alg_temp > 0`` (positions sampled from ``softmax(score / alg_temp)``).
  Where ``k = 0`` the never-stall rule still commits the top-1 [bdiff], unless
  ``allow_idle``: then the step commits nothing, as the reference does (with ``steps`` equal to
  the generation length its first step is such a step).
  """
  eps, steps = 1e-3, steps_per_block(cfg, inp.cand.shape[-1])
  step = inp.step.astype(jnp.float32)
  t = 1.0 - step * (1.0 - eps) / steps
  s = 1.0 - (step + 1.0) * (1.0 - eps) / steps
  n = sel.count(inp.cand)
  k = jnp.floor(n * (1.0 - s / t)).astype(jnp.int32)
  k = jnp.where(inp.step >= steps - 1, n, k)
  return sel.topk_mask(inp.score, inp.cand, k), inp.tokens, state


def prophet_init(cfg: StrategyConfig, batch: int, length: int) -> dict:
  return {**schedule_init(cfg, batch, length), "fired": jnp.zeros((batch,), bool)}


def prophet_rule(cfg: StrategyConfig, inp: StepInputs, state: dict):
  """Prophet early commit: fill the block with its argmax when the top-2 logit gap is large.

  Source: pixeli99/Prophet ``generate_earlyexit.py``, arXiv 2508.19982.
  ``gap = z_(1) - z_(2)`` on raw **logits**, averaged over the monitored positions;
  ``τ(π) = prophet_gaps[#{bounds <= π}]`` (7.5 / 5.0 / 2.5 at 0.33 / 0.67); all-in when
  ``gap >= τ(π)``, else the LLaDA static rule. Deviation [bdiff], a per-block port: Prophet
  decodes one long sequence and its all-in fills every remaining block, but later blocks do
  not exist yet here, so the fill covers the active block; the monitored set is every masked
  position of the block (Prophet monitors a forced answer span) and progress is
  ``π = step_in_block / steps``. ``state["fired"]`` is True for rows that went all-in at
  this step; the sampling loop does not read it (the filled block is simply complete).
  """
  base, tokens, state = static_rule(cfg, inp, state)
  top2 = jax.lax.top_k(inp.logits, 2)[0]
  gap = top2[..., 0] - top2[..., 1]
  n = sel.count(inp.cand)
  mean_gap = jnp.sum(jnp.where(inp.cand, gap, 0.0), -1) / jnp.maximum(n, 1)
  progress = inp.step.astype(jnp.float32) / steps_per_block(cfg, inp.cand.shape[-1])
  level = jnp.sum(progress[:, None] >= jnp.asarray(cfg.prophet_bounds), -1)
  fired = (n > 0) & (mean_gap >= jnp.asarray(cfg.prophet_gaps, jnp.float32)[level])
  greedy = jnp.argmax(inp.logits, axis=-1).astype(jnp.int32)
  commit = jnp.where(fired[:, None], inp.cand, base)
  tokens = jnp.where(fired[:, None], greedy, tokens)
  return commit, tokens, {**state, "fired": fired}


def unmask_probability(step: jax.Array, steps: int, grid: str = "linear") -> jax.Array:
  """``u = (α(s) - α(t)) / (1 - α(t)) = 1 - s/t`` for ``μ(t) = t``, the unmask probability.

  ``t = 1 - i/T``, ``s = max(t - 1/T, 0)``; the MD4 ``cosine`` grid maps both through
  ``τ -> cos(π/2 (1 - τ))``. The last step (and any later one) reveals everything.
  Deviation [bdiff]: kuleshov-group/bd3lms steps through ``linspace(1, 0, T)`` with
  ``dt = 1/T``, so its grid points are not ``1/T`` apart and the last one is ``t = 0``
  (a division by zero that its blocks usually never reach); bdiff uses the even grid above.
  """
  t = 1.0 - step.astype(jnp.float32) / steps
  s = jnp.maximum(t - 1.0 / steps, 0.0)
  if grid == "cosine":
    t, s = (jnp.cos(math.pi / 2 * (1.0 - x)) for x in (t, s))
  u = 1.0 - s / jnp.maximum(t, 1e-12)
  return jnp.where(step >= steps - 1, 1.0, jnp.clip(u, 0.0, 1.0))


def ancestral_rule(cfg: StrategyConfig, inp: StepInputs, state: dict):
  """Ancestral (D3PM / MDLM / MD4 / BD3-LM ``ddpm``) step, one-draw form.

  Sources: google-deepmind/md4 ``md4/models/diffusion/md4.py`` ``ancestral_sample_step`` /
  ``topp_sample_step`` (arXiv 2406.04329); kuleshov-group/mdlm ``ddpm`` (arXiv 2406.07524);
  kuleshov-group/bd3lms ``_ddpm_caching_update`` (arXiv 2503.09573). Each candidate draws
  from the ``(V+1)``-way categorical ``[u·p_θ(v), 1 - u]`` with ``p_θ`` the sampling
  distribution (temperature, top-k, nucleus; MD4's top-p keeps the crossing token, the ``n1``
  default). The masking schedule is fixed to ``μ(t) = t`` (log-linear, MDLM/BD3-LM), so
  ``u = 1 - s/t``; ``cfg.steps`` = ``T`` per block.

  Registered twice:

  * ``ancestral`` — the references always sample ``p_θ``, so ``temperature=0`` means ``T = 1``.
  * ``ancestral_greedy`` — deviation [bdiff]: ``p_θ`` replaced by a one-hot on the argmax
    (Bernoulli(u) reveals of greedy tokens); needs ``temperature=0``.

  Deviation [bdiff], both: unless ``allow_idle``, a step that reveals nothing reveals one
  uniformly random candidate with a fresh sample (the first-hitting event), so the loop never
  spins; ``allow_idle=True`` gives the exact sampler (what MDLM's ``ddpm_cache`` relies on).
  """
  steps = steps_per_block(cfg, inp.cand.shape[-1])
  u = unmask_probability(inp.step, steps, cfg.time_grid)[:, None, None]
  if cfg.temperature > 0:
    log_p = jax.nn.log_softmax(inp.filtered, axis=-1)
  else:
    onehot = jax.nn.one_hot(inp.tokens, inp.logits.shape[-1], dtype=bool)
    log_p = jnp.where(onehot, 0.0, -jnp.inf)
  stay = jnp.broadcast_to(jnp.log1p(-u), log_p.shape[:-1] + (1,))
  ext = jnp.concatenate([log_p + jnp.log(u), stay], axis=-1)  # [b, L, V + 1]
  draw = jax.vmap(lambda k, z: jax.random.categorical(k, z, axis=-1))(
      sel.row_keys(inp.keys, sel.SALT_REVEAL), ext)
  commit = inp.cand & (draw < inp.logits.shape[-1])
  tokens = jnp.where(commit, draw, inp.tokens)
  if not cfg.allow_idle:
    commit = sel.ensure_progress(commit, _uniform_scores(inp), inp.cand)
  return commit, tokens, state


def _uniform_scores(inp: StepInputs) -> jax.Array:
  return sel.row_uniform(sel.row_keys(inp.keys, sel.SALT_SCORE), inp.cand.shape[1:])


def first_hitting_init(cfg: StrategyConfig, batch: int, length: int) -> dict:
  del cfg, length
  return {"t": jnp.ones((batch,), jnp.float32)}


def first_hitting_rule(cfg: StrategyConfig, inp: StepInputs, state: dict):
  """BD3-LM first-hitting: one uniformly random masked position per step, token ``~ p_θ``.

  Source: kuleshov-group/bd3lms ``diffusion.py`` ``_ddpm_caching_update`` and
  ``_nucleus_sample`` with ``sampling.first_hitting=True`` (arXiv 2503.09573; the first-hitting
  sampler is from Zheng et al., arXiv 2409.02908). BD3-LM has no temperature: it samples the
  token from ``p_θ`` after its nucleus filter, which drops the token whose cumulative mass
  crosses ``top_p`` (``nucleus_mode="n2"``, the default here); its generation scripts use
  ``top_p = 0.9`` (config default 1.0 = off). ``state["t"]`` follows ``t <- t·u^{1/n_m}``
  per row and resets to 1 at each block start; it only matters to time-conditioned models.

  Registered twice:

  * ``first_hitting`` — BD3-LM's rule: ``temperature=0`` means BD3-LM's ``T = 1``; another
    temperature tempers ``p_θ`` (an extension, BD3-LM has no such knob).
  * ``first_hitting_greedy`` — deviation [bdiff]: the token is the argmax; needs
    ``temperature=0``.

  Deviations [bdiff], both: the reference draws one ``u`` for the whole batch and its
  position draw assumes batch 1 (which its generation scripts use); bdiff draws both per row. The
  categorical draw is float32 (the reference uses float64 probabilities).
  """
  n = sel.count(inp.cand)
  u = sel.row_uniform(sel.row_keys(inp.keys, sel.SALT_REVEAL), ())
  t = jnp.where(inp.step == 0, 1.0, state["t"])
  t = jnp.where(n > 0, t * u ** (1.0 / jnp.maximum(n, 1)), t)
  return sel.top1_mask(_uniform_scores(inp), inp.cand), inp.tokens, {"t": t}


def ar_rule(cfg: StrategyConfig, inp: StepInputs, state: dict):
  """Autoregressive baseline: the left-most masked position, one per step.

  A block-diffusion model with block size 1 is an ordinary AR LM; this runs any block size
  left to right through the same loop (SDAR's ``sequential`` with one token per step).
  Greedy at ``temperature = 0``, sampled otherwise.
  """
  del cfg
  return sel.leftmost_masks(inp.cand, 1), inp.tokens, state
