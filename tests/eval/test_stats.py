"""Statistics helpers: mean ± s.d. over draws, tie rule, Wilson binomial interval."""
import math

import pytest

from bdiff.eval import stats


def test_mean_sd_matches_textbook_values():
  m = stats.mean_sd([2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0])
  assert m.mean == 5.0 and m.n == 8
  assert m.sd == pytest.approx(math.sqrt(32 / 7), rel=1e-12)  # sample s.d. (ddof = 1)
  assert m.se == pytest.approx(m.sd / math.sqrt(8), rel=1e-12)
  assert m.format(2) == "5.00 ± 2.14"


def test_mean_sd_single_value_has_no_noise_estimate():
  m = stats.mean_sd([1.5])
  assert m.mean == 1.5 and math.isnan(m.sd)


def test_mean_sd_rejects_empty():
  with pytest.raises(ValueError, match="empty"):
    stats.mean_sd([])


def test_one_draw_ranking_of_the_old_sweep_is_a_tie_under_its_own_noise():
  """B=16 (8.99 PPL, 2.196 nats) vs MDLM (2.216): 0.02 nats apart with ~0.03 draw noise."""
  b16 = stats.mean_sd([2.196, 2.170, 2.225, 2.201, 2.188])
  mdlm = stats.mean_sd([2.216, 2.240, 2.190, 2.221, 2.205])
  assert not stats.distinguishable(b16, mdlm)
  ar = stats.mean_sd([1.461] * 5)  # deterministic: zero spread
  assert stats.distinguishable(ar, b16)


def test_wilson_interval_reference_values():
  # Wilson (1927) score interval; reference values from the closed form, e.g. R's
  # prop.test(..., correct=FALSE) / statsmodels proportion_confint(method="wilson").
  lo, hi = stats.wilson_interval(81, 263)
  assert lo == pytest.approx(0.2553, abs=5e-4) and hi == pytest.approx(0.3662, abs=5e-4)
  lo, hi = stats.wilson_interval(0, 10)
  assert lo == 0.0 and hi == pytest.approx(0.2775, abs=5e-4)
  lo, hi = stats.wilson_interval(10, 10)
  assert hi == 1.0 and lo == pytest.approx(0.7225, abs=5e-4)


def test_wilson_interval_contains_the_estimate_and_shrinks_with_n():
  for k, n in [(1, 4), (45, 48), (900, 1000)]:
    lo, hi = stats.wilson_interval(k, n)
    assert 0 <= lo <= k / n <= hi <= 1
  assert (lambda a, b: a[1] - a[0] > b[1] - b[0])(stats.wilson_interval(9, 10),
                                                  stats.wilson_interval(90, 100))


@pytest.mark.parametrize("args,match", [((1, 0), "n must be positive"),
                                        ((5, 4), "successes"), ((-1, 4), "successes")])
def test_wilson_interval_rejects_bad_counts(args, match):
  with pytest.raises(ValueError, match=match):
    stats.wilson_interval(*args)


def test_accuracy_summary_reports_n_and_interval():
  s = stats.accuracy_summary(45, 48)
  assert s["n"] == 48 and s["correct"] == 45 and s["accuracy"] == pytest.approx(93.75)
  assert s["ci95"] == "[83.2, 97.9]"
