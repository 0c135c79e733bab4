"""SUBS cross-entropy, token shift, weights, reductions, auxiliary AR loss, metrics."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bdiff.diffusion import losses
from bdiff.diffusion.schedules import get_schedule

V = 11


def _setup(b=3, n=7, seed=0):
  # numpy draws: test data needs no jitted threefry (slow to compile on XLA:CPU).
  rs = np.random.RandomState(seed)
  logits = jnp.asarray(rs.normal(size=(b, n, V)), jnp.float32)
  targets = jnp.asarray(rs.randint(0, V, (b, n)), jnp.int32)
  mask = jnp.asarray(rs.rand(b, n) < 0.5)
  return logits, targets, mask


def test_cross_entropy_matches_log_softmax_at_masked_positions():
  logits, targets, mask = _setup()
  ce = losses.masked_cross_entropy(logits, targets, mask)
  ref = -np.take_along_axis(np.asarray(jax.nn.log_softmax(logits)), np.asarray(targets)[..., None],
                            -1)[..., 0]
  np.testing.assert_allclose(ce, np.where(mask, ref, 0.0), rtol=1e-5, atol=1e-6)


def test_unmasked_positions_carry_no_loss_or_gradient():
  logits, targets, mask = _setup(seed=1)
  noise = jnp.asarray(50.0 * np.random.RandomState(9).normal(size=logits.shape), jnp.float32)
  bump = jnp.where(mask[..., None], 0.0, noise)
  total = lambda z: losses.masked_cross_entropy(z, targets, mask).sum()
  np.testing.assert_allclose(total(logits + bump), total(logits), rtol=1e-6)
  # −inf rows (a materialised SUBS carry-over) at unmasked positions: no NaN in value or grad.
  poisoned = jnp.where(mask[..., None], logits, -jnp.inf)
  grad = jax.grad(total)(poisoned)
  assert np.isfinite(total(poisoned)) and np.all(np.isfinite(grad))
  assert np.all(np.asarray(grad)[~np.asarray(mask)] == 0)
  # And a bump at masked positions does change it (the test can fail).
  assert abs(float(total(logits + jnp.where(mask[..., None], noise, 0.0)) - total(logits))) > 1


def test_cross_entropy_runs_in_float32_for_bf16_logits():
  logits, targets, mask = _setup(seed=2)
  ce = losses.masked_cross_entropy(logits.astype(jnp.bfloat16), targets, mask)
  assert ce.dtype == jnp.float32
  # Out-of-vocabulary ids (e.g. pad = MASK = V) at unsupervised positions are harmless.
  ce_pad = losses.masked_cross_entropy(logits, jnp.where(mask, targets, V), mask)
  assert np.all(np.isfinite(ce_pad))


def test_shift_logits_reads_previous_position():
  z = jnp.arange(2 * 5 * 3, dtype=jnp.float32).reshape(2, 5, 3)
  shifted = losses.shift_logits(z)
  np.testing.assert_array_equal(shifted[:, 1:], z[:, :-1])
  np.testing.assert_array_equal(shifted[:, 0], z[:, 0])


def test_loss_weights():
  t = jnp.asarray([0.1, 0.5, 1.0])
  np.testing.assert_allclose(losses.loss_weights("elbo", get_schedule("loglinear"), t), 1 / t,
                             rtol=1e-6)
  floor = get_schedule("linear_floor")
  mu = 0.999 * t + 1e-3
  np.testing.assert_allclose(losses.loss_weights("inv_p", floor, t), 1 / mu, rtol=1e-5)
  np.testing.assert_allclose(losses.loss_weights("inv_p", floor, t[:2], complement=True),
                             1 / (1 - mu[:2]), rtol=1e-5)
  for name in ("none", "unit_all_masked"):
    np.testing.assert_array_equal(losses.loss_weights(name, floor, t), np.ones(3))
  with pytest.raises(ValueError, match="diffusion.weighting"):
    losses.loss_weights("elbo", floor, t, complement=True)
  with pytest.raises(ValueError, match="diffusion.weighting"):
    losses.loss_weights("1/t", floor, t)


def test_reductions_by_hand():
  term = jnp.asarray([[1.0, 2.0, 0.0, 0.0], [3.0, 0.0, 0.0, 0.0]])
  loss_mask = jnp.asarray([[1, 1, 0, 0], [1, 0, 0, 0]], bool)
  valid = jnp.asarray([[1, 1, 1, 0], [1, 1, 1, 1]], bool)
  eligible = jnp.asarray([[1, 1, 0, 0], [1, 1, 1, 0]], bool)
  expected = {"token_mean": 6 / 7, "labelled_mean": 6 / 3, "answer_tokens": 6 / 5,
              "sequence_sum": (3 + 3) / 2, "llada_pretrain": 6 / 8,
              "llada_sft": (3 / 2 + 3 / 3) / 2}
  assert set(expected) == set(losses.REDUCTIONS)
  for name, value in expected.items():
    got = losses.reduce_loss(term, name, valid=valid, loss_mask=loss_mask, eligible=eligible)
    np.testing.assert_allclose(got, value, rtol=1e-6, err_msg=name)
  with pytest.raises(ValueError, match="diffusion.reduction"):
    losses.reduce_loss(term, "mean", valid=valid, loss_mask=loss_mask, eligible=eligible)


def test_autoregressive_loss_is_next_token_ce():
  logits, x0, _ = _setup(b=2, n=6, seed=3)
  valid = jnp.ones((2, 6), bool).at[1, 4:].set(False)
  logp = np.asarray(jax.nn.log_softmax(logits))
  x = np.asarray(x0)
  terms = [-logp[b, i, x[b, i + 1]] for b in range(2) for i in range(5)
           if valid[b, i] and valid[b, i + 1]]
  np.testing.assert_allclose(losses.autoregressive_loss(logits, x0, valid), np.mean(terms),
                             rtol=1e-5)


def test_t_bucket_losses():
  ce = jnp.asarray([[1.0, 2.0, 3.0, 4.0]])
  mask = jnp.asarray([[1, 1, 1, 0]], bool)
  t = jnp.asarray([[0.1, 0.2, 0.9, 0.6]])
  got = losses.t_bucket_losses(ce, mask, t)
  np.testing.assert_allclose([got[f"ce_t{k}"] for k in range(4)], [1.5, 0.0, 0.0, 3.0])


def test_summarize_nelbo():
  s = losses.summarize_nelbo(jnp.float32(20.0), 10)
  np.testing.assert_allclose(s["nll"], 2.0)
  np.testing.assert_allclose(s["bits_per_token"], 2.0 / math.log(2), rtol=1e-6)
  np.testing.assert_allclose(s["ppl_bound"], math.exp(2.0), rtol=1e-6)


def test_shift_logits_takes_block_initial_predictions_from_the_clean_stream():
  z = jnp.arange(2 * 6 * 3, dtype=jnp.float32).reshape(2, 6, 3)
  clean = -z
  first = jnp.broadcast_to(jnp.arange(6) % 3 == 0, (2, 6))
  shifted = losses.shift_logits(z, clean, first)
  np.testing.assert_array_equal(shifted[:, 3], clean[:, 2])     # block-initial: clean i − 1
  np.testing.assert_array_equal(shifted[:, [1, 2, 4, 5]], z[:, [0, 1, 3, 4]])  # noisy i − 1
