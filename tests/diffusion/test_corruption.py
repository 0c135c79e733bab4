"""t sampling (antithetic strata, clip window) and masking (Bernoulli, resampled, complementary)."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bdiff.diffusion import corruption
from bdiff.diffusion.schedules import get_schedule

MASK = 97


def _mask(rng, x0, t, block_size, schedule, **kw):
  """mask_tokens under jit: one compile instead of eager op-by-op dispatch."""
  fn = lambda r, x, tt: corruption.mask_tokens(r, x, tt, block_size, MASK, schedule, **kw)
  return jax.jit(fn)(rng, x0, t)


def test_antithetic_one_sample_per_stratum():
  batch, blocks = 3, 5
  n = batch * blocks
  t = corruption.sample_t(jax.random.key(0), batch, blocks, antithetic=True, eps_min=0.0,
                          eps_max=1.0)
  assert t.shape == (batch, blocks) and t.dtype == jnp.float32
  flat = np.asarray(t).reshape(-1)  # row-major (sequence, block) order
  j = np.arange(n, dtype=np.float32)
  lo, hi = j / np.float32(n), (j + 1) / np.float32(n)
  assert np.all(flat >= lo) and np.all(flat < hi)


def test_antithetic_per_sequence_t_broadcast_over_blocks():
  t = np.asarray(corruption.sample_t(jax.random.key(1), 7, 4, antithetic=True, eps_min=0.0,
                                     eps_max=1.0, per_block_t=False))
  np.testing.assert_array_equal(t, np.repeat(t[:, :1], 4, axis=1))
  assert sorted(np.floor(t[:, 0] * 7).astype(int)) == list(range(7))


def test_antithetic_strata_survive_float32_rounding():
  n = 1 << 15  # large N: (u + j)/N would round onto the next stratum's edge
  t = np.asarray(corruption.sample_t(jax.random.key(2), n, 1, antithetic=True, eps_min=0.0,
                                     eps_max=1.0)).reshape(-1)
  j = np.arange(n, dtype=np.float32)
  assert np.all(t < (j + 1) / np.float32(n)) and np.all(t >= j / np.float32(n))


@pytest.mark.parametrize("antithetic", [True, False])
def test_clipped_t_lies_in_window(antithetic):
  t = corruption.sample_t(jax.random.key(3), 16, 8, antithetic=antithetic, eps_min=0.3,
                          eps_max=0.8)
  assert float(t.min()) >= 0.3 and float(t.max()) <= 0.8
  assert float(t.max() - t.min()) > 0.4  # spread over the window, not collapsed


def test_t_identically_one_when_window_is_one_one():
  t = corruption.sample_t(jax.random.key(4), 4, 3, antithetic=True, eps_min=1.0, eps_max=1.0)
  np.testing.assert_array_equal(t, np.ones((4, 3), np.float32))


def test_bernoulli_mask_respects_eligibility_and_rate():
  b, n, bs = 32, 64, 8
  x0 = jax.random.randint(jax.random.key(5), (b, n), 0, MASK)
  eligible = jnp.arange(n)[None, :] % 3 != 0
  eligible = jnp.broadcast_to(eligible, (b, n))
  t = jnp.full((b, n // bs), 0.3)
  xt, masked = _mask(jax.random.key(6), x0, t, bs, get_schedule("loglinear_bd3"),
                     eligible=eligible)
  masked, xt, x0 = map(np.asarray, (masked, xt, x0))
  assert not masked[~np.asarray(eligible)].any()
  np.testing.assert_array_equal(xt, np.where(masked, MASK, x0))
  rate = masked.sum() / np.asarray(eligible).sum()
  assert abs(rate - 0.3) < 0.03


def test_t_one_masks_every_eligible_token_even_with_a_floor_schedule():
  x0 = jnp.arange(24).reshape(2, 12)
  eligible = jnp.ones((2, 12), bool).at[:, 0].set(False)
  _, masked = _mask(jax.random.key(7), x0, jnp.ones((2, 3)), 4, get_schedule("loglinear"),
                    eligible=eligible)
  np.testing.assert_array_equal(masked, eligible)


def _truncated_binomial(bs, p, lo, hi):
  pmf = np.array([math.comb(bs, k) * p**k * (1 - p)**(bs - k) for k in range(bs + 1)])
  pmf[:lo] = 0
  pmf[hi + 1:] = 0
  return pmf / pmf.sum()


def test_resampled_counts_follow_truncated_binomial():
  b, k_blocks, bs, p = 250, 16, 8, 0.4
  x0 = jnp.zeros((b, k_blocks * bs), jnp.int32)
  t = jnp.full((b, k_blocks), p)
  _, masked = _mask(jax.random.key(8), x0, t, bs, get_schedule("loglinear_bd3"),
                    resample=True, eps_min=0.25, eps_max=0.75, enforce_lower=True,
                    enforce_upper=True)
  masked = np.asarray(masked).reshape(b, k_blocks, bs)
  counts = masked.sum(-1).reshape(-1)
  assert counts.min() >= 2 and counts.max() <= 6  # k_lo = ceil(8·0.25), k_hi = floor(8·0.75)
  expected = _truncated_binomial(bs, p, 2, 6)[2:7] * counts.size
  observed = np.bincount(counts, minlength=bs + 1)[2:7]
  chi2 = ((observed - expected) ** 2 / expected).sum()
  assert chi2 < 25.0, (observed, expected)  # df = 4; p ≈ 5e-5 at the threshold
  # The chosen subset is uniform over positions.
  per_position = masked.reshape(-1, bs).mean(0)
  np.testing.assert_allclose(per_position, counts.mean() / bs, atol=0.03)


def test_resample_upper_only_allows_empty_blocks_and_respects_eligibility():
  b, bs = 200, 8
  x0 = jnp.zeros((b, 2 * bs), jnp.int32)
  eligible = jnp.ones((b, 2 * bs), bool).at[:, :4].set(False)  # first block has 4 eligible
  lower, upper = corruption.resample_enforcement(1e-3, 0.5)
  assert not bool(lower) and bool(upper)
  _, masked = _mask(jax.random.key(9), x0, jnp.full((b, 2), 0.45), bs,
                    get_schedule("loglinear_bd3"), eligible=eligible, resample=True,
                    eps_min=1e-3, eps_max=0.5, enforce_lower=lower, enforce_upper=upper)
  masked = np.asarray(masked)
  assert not masked[:, :4].any()
  counts = masked.reshape(b, 2, bs).sum(-1)
  assert counts[:, 0].max() <= 2 and counts[:, 1].max() <= 4  # ⌊n_e·0.5⌋ per block
  assert (counts == 0).any()


def test_resample_counts_eligible_tokens_only():
  b, bs = 100, 8
  x0 = jnp.zeros((b, bs), jnp.int32)
  eligible = jnp.asarray(np.tile([0, 1, 0, 1, 1, 0, 1, 0], (b, 1)).astype(bool))  # n_e = 4
  _, masked = _mask(jax.random.key(13), x0, jnp.full((b, 1), 0.5), bs,
                    get_schedule("loglinear_bd3"), eligible=eligible, resample=True,
                    eps_min=0.5, eps_max=0.75, enforce_lower=True, enforce_upper=True)
  masked = np.asarray(masked)
  assert not masked[~np.asarray(eligible)].any()
  counts = masked.sum(-1)
  assert counts.min() >= 2 and counts.max() <= 3  # k/4 ∈ [0.5, 0.75]
  assert set(np.unique(counts)) == {2, 3}


def test_enforcement_flags_survive_float32_round_trip():
  lower, upper = corruption.resample_enforcement(jnp.float32(1e-3), jnp.float32(1.0))
  assert not bool(lower) and not bool(upper)
  lower, upper = corruption.resample_enforcement(0.05, 0.55)
  assert bool(lower) and bool(upper)


def test_unachievable_window_is_rejected():
  with pytest.raises(ValueError, match="diffusion.clip_min"):
    corruption.check_clip_window(4, 0.3, 0.45)  # k/4 ∈ {0.25, 0.5}: none inside
  corruption.check_clip_window(4, 0.3, 0.5)
  assert corruption.clip_window_is_achievable(16, 0.3, 0.8)
  assert not corruption.clip_window_is_achievable(2, 0.6, 0.9)


def test_complementary_covers_every_eligible_token_exactly_once():
  b, n = 4, 24
  x0 = jax.random.randint(jax.random.key(10), (b, n), 0, MASK)
  eligible = jax.random.bernoulli(jax.random.key(11), 0.7, (b, n))
  _, masked = _mask(jax.random.key(12), x0, jnp.full((b, 3), 0.5), 8,
                    get_schedule("linear_floor"), eligible=eligible)
  comp = corruption.complementary_mask(masked, eligible)
  covered = np.asarray(masked).astype(int) + np.asarray(comp).astype(int)
  np.testing.assert_array_equal(covered, np.asarray(eligible).astype(int))
