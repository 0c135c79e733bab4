"""Masking noise schedules of the absorbing-state forward process.

A schedule maps diffusion time ``t ∈ [0, 1]`` (0 clean, 1 fully masked) to the masking
probability ``μ(t)`` ("move chance"), the keep probability ``α(t) = 1 − μ(t)`` and the ELBO
weight ``w(t) = −α'(t) / (1 − α(t)) = μ'(t) / μ(t)`` of the continuous-time NELBO (MDLM,
arXiv 2406.07524; MD4, arXiv 2406.04329; BD3-LM, arXiv 2503.09573).

Names are unambiguous on purpose: MDLM's "linear" is linear in ``σ = −log α`` while MD4's
"linear" is linear in ``α``; MD4's "cosine" masks as ``sin(πt/2)`` while MDLM/BD3-LM's masks as
``1 − cos(πt/2)``. Each name below says which one it is.

Weights are written in closed form (tests check them against ``jax.grad`` of ``α``), because
autodiff through ``1 − α`` loses precision near ``t = 0`` where the weight matters most.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable

import jax.numpy as jnp

_HALF_PI = math.pi / 2

# mdlm `Linear` defaults: σ(t) = σ_min + t (σ_max − σ_min) with σ_min = 0, σ_max = 10.
_SIGMA_MAX_MDLM = 10.0


def _loglinear(t, eps, _):
  # MDLM/SEDD LogLinearNoise: σ(t) = −log(1 − (1−ε)t)  ⇒  μ = (1−ε)t; ε cancels in w.
  return (1 - eps) * t, 1 / t


def _loglinear_bd3(t, eps, _):
  # bd3lms LogLinearNoise.compute_loss_scaling_and_move_chance: μ = t, w = 1/t; its ε only
  # enters through the clip window t ∈ [ε_min, ε_max].
  del eps
  return t, 1 / t


def _linear_md4(t, eps, _):
  # md4 MaskingSchedule "linear": α = ε + (1−2ε)(1−t).
  mu = eps + (1 - 2 * eps) * t
  return mu, (1 - 2 * eps) / mu


def _linear_floor(t, eps, _):
  # LLaDA GUIDELINES.md / Fast-dLLM v2 / SDAR: μ = (1−ε)t + ε (a masking floor of ε).
  mu = (1 - eps) * t + eps
  return mu, (1 - eps) / mu


def _cosine_md4(t, eps, _):
  # md4 "cosine": α̃(t) = 1 − cos(π/2·(1−t)) = 1 − sin(πt/2); masks fast early (concave μ).
  mu = eps + (1 - 2 * eps) * jnp.sin(_HALF_PI * t)
  return mu, (1 - 2 * eps) * _HALF_PI * jnp.cos(_HALF_PI * t) / mu


def _cosine_mdlm(t, eps, _):
  # kuleshov-group/mdlm CosineNoise: σ(t) = −log(ε + (1−ε)cos(πt/2)); masks slowly early.
  one_minus_cos = 1 - jnp.cos(_HALF_PI * t)
  return (1 - eps) * one_minus_cos, _HALF_PI * jnp.sin(_HALF_PI * t) / one_minus_cos


def _cosine_bd3(t, eps, _):
  # kuleshov-group/bd3lms CosineNoise: α = (1−ε)cos(πt/2); bd3lms adds ε to the weight's
  # denominator for stability, so w is the ELBO weight only up to a factor μ/(μ+ε).
  mu = 1 - (1 - eps) * jnp.cos(_HALF_PI * t)
  return mu, _HALF_PI * (1 - eps) * jnp.sin(_HALF_PI * t) / (mu + eps)


def _sigma_linear_mdlm(t, eps, _):
  # kuleshov-group/mdlm `Linear`: linear in σ, not in α: α = exp(−σ(t)), σ = σ_max·t.
  del eps
  sigma = _SIGMA_MAX_MDLM * t
  return -jnp.expm1(-sigma), _SIGMA_MAX_MDLM / jnp.expm1(sigma)


def _poly(t, eps, power):
  # md4 "polyK": α = ε + (1−2ε)(1 − t^k).
  mu = eps + (1 - 2 * eps) * t ** power
  return mu, (1 - 2 * eps) * power * t ** (power - 1) / mu


def _exp_bd3(t, eps, power):
  # bd3lms ExpNoise ("square": e = 2, "sqrt": e = 1/2): μ = max(t^e, ε).
  mu = jnp.maximum(t ** power, eps)
  return mu, power * t ** (power - 1) / mu


def _log_bd3(t, eps, _):
  # bd3lms LogarithmicNoise: μ = log(1+t)/log 2.
  del eps
  return jnp.log1p(t) / math.log(2.0), 1 / ((1 + t) * jnp.log1p(t))


# name -> (formula, default ε, exponent). Defaults follow the cited reference code.
_Formula = Callable[..., tuple]
_REGISTRY: dict[str, tuple[_Formula, float, float]] = {
    "loglinear": (_loglinear, 1e-3, 1.0),
    "loglinear_bd3": (_loglinear_bd3, 1e-3, 1.0),
    "linear_md4": (_linear_md4, 1e-4, 1.0),
    "linear_floor": (_linear_floor, 1e-3, 1.0),
    "cosine_md4": (_cosine_md4, 1e-4, 1.0),
    "cosine_mdlm": (_cosine_mdlm, 1e-3, 1.0),
    "cosine_bd3": (_cosine_bd3, 1e-3, 1.0),
    "sigma_linear_mdlm": (_sigma_linear_mdlm, 0.0, 1.0),
    "square": (_exp_bd3, 1e-3, 2.0),
    "sqrt": (_exp_bd3, 1e-3, 0.5),
    "log": (_log_bd3, 0.0, 1.0),
}
SCHEDULE_NAMES = tuple(_REGISTRY) + ("poly_<k>",)


@dataclasses.dataclass(frozen=True)
class Schedule:
  """A masking schedule; hashable, so it can be a static argument of ``jax.jit``.

  Attributes:
    name: one of ``SCHEDULE_NAMES`` (``poly_<k>`` stands for e.g. ``poly_2``).
    eps: the schedule's ε (its meaning per schedule is in the comment of its formula).
    power: exponent of ``poly_<k>`` / ``square`` / ``sqrt``; 1 elsewhere.
  """
  name: str
  eps: float
  power: float = 1.0

  def _eval(self, t):
    formula = _poly if self.name.startswith("poly_") else _REGISTRY[self.name][0]
    return formula(jnp.asarray(t, jnp.float32), self.eps, self.power)

  def mask_prob(self, t):
    """μ(t): probability that an eligible token is MASK at time ``t``."""
    return self._eval(t)[0]

  def keep_prob(self, t):
    """α(t) = 1 − μ(t)."""
    return 1 - self.mask_prob(t)

  def elbo_weight(self, t):
    """w(t) = −α'(t) / (1 − α(t)), the per-masked-token NELBO weight (cosine_bd3: see code)."""
    return self._eval(t)[1]


def get_schedule(name: str, eps: float | None = None) -> Schedule:
  """Returns the schedule ``name`` with ε = ``eps`` (None: the reference default).

  Raises:
    ValueError: unknown name (naming ``diffusion.schedule``) or ε outside [0, 0.5)
      (naming ``diffusion.eps``).
  """
  if isinstance(name, str) and name.startswith("poly_"):
    try:
      power = float(name[len("poly_"):])
    except ValueError:
      power = -1.0
    if not power > 0:
      raise ValueError(f"diffusion.schedule {name!r}: poly_<k> needs a positive number k")
    default_eps = 1e-4  # md4 MaskingSchedule default
  elif name in _REGISTRY:
    _, default_eps, power = _REGISTRY[name]
  else:
    raise ValueError(f"diffusion.schedule must be one of {SCHEDULE_NAMES}, got {name!r}")
  eps = default_eps if eps is None else float(eps)
  if not 0.0 <= eps < 0.5:
    raise ValueError(f"diffusion.eps must lie in [0, 0.5), got {eps}")
  return Schedule(name=name, eps=eps, power=power)
