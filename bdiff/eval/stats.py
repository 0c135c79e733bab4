"""Uncertainty of reported numbers: mean ± s.d. over Monte Carlo draws, binomial intervals.

Every number bdiff reports comes with its noise. A held-out NELBO is a Monte Carlo estimate
(random diffusion times and masks), so it is reported as the mean ± sample standard deviation
over several independent draws; an accuracy is a binomial proportion over ``n`` examples, so it
is reported with ``n`` and a Wilson score interval (E. B. Wilson, "Probable inference, the law
of succession, and statistical inference", JASA 1927), which, unlike the normal approximation,
stays inside [0, 1] and keeps its coverage at 0 % and 100 %.
"""
from __future__ import annotations

import dataclasses
import math
from statistics import NormalDist
from typing import Sequence


@dataclasses.dataclass(frozen=True)
class MeanSD:
  """Mean and sample standard deviation (ddof = 1) of ``n`` draws."""
  mean: float
  sd: float
  n: int

  @property
  def se(self) -> float:
    """Standard error of the mean."""
    return self.sd / math.sqrt(self.n) if self.n > 1 else float("nan")

  def format(self, digits: int = 3) -> str:
    return f"{self.mean:.{digits}f} ± {self.sd:.{digits}f}"


def mean_sd(values: Sequence[float]) -> MeanSD:
  """Mean ± sample s.d. of ``values`` (s.d. is NaN for a single value: no noise estimate)."""
  xs = [float(v) for v in values]
  if not xs:
    raise ValueError("mean_sd: values is empty")
  mean = math.fsum(xs) / len(xs)
  if len(xs) == 1:
    return MeanSD(mean, float("nan"), 1)
  var = math.fsum((x - mean) ** 2 for x in xs) / (len(xs) - 1)
  return MeanSD(mean, math.sqrt(var), len(xs))


def distinguishable(a: MeanSD, b: MeanSD, z: float = 2.0) -> bool:
  """Whether two means differ by more than ``z`` standard errors of their difference.

  The rule used to rank configurations: closer means are reported as a tie.
  """
  se = math.sqrt(a.se ** 2 + b.se ** 2)
  return abs(a.mean - b.mean) > z * se


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
  """Wilson score interval for a binomial proportion, as fractions in [0, 1]."""
  if n <= 0:
    raise ValueError(f"wilson_interval: n must be positive, got {n}")
  if not 0 <= successes <= n:
    raise ValueError(f"wilson_interval: successes must be in [0, n={n}], got {successes}")
  if not 0.0 < confidence < 1.0:
    raise ValueError(f"wilson_interval: confidence must be in (0, 1), got {confidence}")
  z = NormalDist().inv_cdf(0.5 + confidence / 2)
  p = successes / n
  denom = 1 + z * z / n
  centre = (p + z * z / (2 * n)) / denom
  half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
  # At 0 and n the bounds are exactly 0 and 1; rounding would leave 1e-17 there.
  lo = 0.0 if successes == 0 else max(0.0, centre - half)
  hi = 1.0 if successes == n else min(1.0, centre + half)
  return lo, hi


def accuracy_summary(successes: int, n: int) -> dict:
  """``accuracy`` (%), ``n``, ``correct`` and its Wilson 95 % interval ``ci`` as a string."""
  lo, hi = wilson_interval(successes, n)
  return {"accuracy": 100.0 * successes / n, "n": n, "correct": successes,
          "ci95": f"[{100 * lo:.1f}, {100 * hi:.1f}]"}
