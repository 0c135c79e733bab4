"""Schedules: closed-form ELBO weights vs autodiff, monotone masking, endpoints, naming."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bdiff.diffusion import schedules

NAMES = [n for n in schedules.SCHEDULE_NAMES if n != "poly_<k>"] + ["poly_2", "poly_0.5"]
T_GRID = jnp.linspace(0.05, 0.95, 7)


def _autodiff_weight(sched, t):
  d_alpha = jax.vmap(jax.grad(lambda s: sched.keep_prob(s)))(t)
  return -d_alpha / (1 - sched.keep_prob(t))


@pytest.mark.parametrize("name", NAMES)
def test_elbo_weight_matches_autodiff(name):
  sched = schedules.get_schedule(name)
  expected = _autodiff_weight(sched, T_GRID)
  got = sched.elbo_weight(T_GRID)
  if name == "cosine_bd3":  # bd3lms adds ε to the denominator; undo it to compare exactly
    mu = sched.mask_prob(T_GRID)
    got = got * (mu + sched.eps) / mu
  np.testing.assert_allclose(got, expected, rtol=2e-4)


@pytest.mark.parametrize("name", NAMES)
def test_mask_prob_monotone_with_endpoints(name):
  sched = schedules.get_schedule(name)
  t = jnp.linspace(0.0, 1.0, 101)
  mu = np.asarray(sched.mask_prob(t))
  assert np.all(np.diff(mu) >= 0) and mu[-1] > mu[0]
  assert mu[-1] >= 1 - 1e-3 - 1e-6  # t = 1 is (almost) fully masked
  assert mu[0] <= max(sched.eps, 0.0) + 1e-6  # t = 0 is (almost) clean
  np.testing.assert_allclose(sched.keep_prob(t), 1 - mu, atol=1e-7)


def test_reference_formulas():
  t = jnp.asarray([0.1, 0.5, 0.9])
  np.testing.assert_allclose(schedules.get_schedule("loglinear").elbo_weight(t), 1 / t, rtol=1e-6)
  np.testing.assert_allclose(schedules.get_schedule("loglinear").mask_prob(t), 0.999 * t,
                             rtol=1e-6)
  np.testing.assert_allclose(schedules.get_schedule("loglinear_bd3").mask_prob(t), t)
  floor = schedules.get_schedule("linear_floor", eps=1e-3)
  np.testing.assert_allclose(floor.mask_prob(t), 0.999 * t + 1e-3, rtol=1e-6)
  md4 = schedules.get_schedule("cosine_md4")
  np.testing.assert_allclose(md4.mask_prob(t), 1e-4 + (1 - 2e-4) * np.sin(np.pi * t / 2),
                             rtol=1e-6)


def test_schedule_is_hashable_static_arg():
  a, b = schedules.get_schedule("loglinear"), schedules.get_schedule("loglinear")
  assert a == b and hash(a) == hash(b)
  f = jax.jit(lambda t, s: s.mask_prob(t), static_argnums=1)
  np.testing.assert_allclose(f(jnp.float32(0.5), a), 0.4995, rtol=1e-6)


@pytest.mark.parametrize("name,eps,key", [("linear", None, "diffusion.schedule"),
                                          ("cosine", None, "diffusion.schedule"),
                                          ("poly_x", None, "diffusion.schedule"),
                                          ("loglinear", 0.7, "diffusion.eps"),
                                          ("loglinear", -1e-3, "diffusion.eps")])
def test_bad_names_raise_naming_the_key(name, eps, key):
  with pytest.raises(ValueError, match=key):
    schedules.get_schedule(name, eps)
