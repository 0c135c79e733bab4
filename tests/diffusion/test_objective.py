"""The training objective and NELBO through fake two-stream forwards (no network needed)."""
import math

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from bdiff import diffusion

V = 13  # real vocabulary; MASK = V
B, N = 4, 16


def _cfg(**overrides):
  cfg = diffusion.default_diffusion_config()
  cfg.block_size = 4
  cfg.update(overrides)
  return cfg


def _tokens(b=B, n=N, seed=0):
  return jnp.asarray(np.random.RandomState(seed).randint(0, V, (b, n)), jnp.int32)


def _table(seed=1):
  return jnp.asarray(np.random.RandomState(seed).normal(size=(V + 1, V)), jnp.float32)


def _prev_token_fn(table):
  """Logits at i read x0[i−1] (row V for i = 0): causal in x0, like an AR model."""
  def logits_fn(xt, x0, want_clean=False):
    prev = jnp.concatenate([jnp.full_like(x0[:, :1], V), x0[:, :-1]], axis=1)
    return table[prev], (table[x0] if want_clean else None)
  return logits_fn


def _loss(fn, cfg, x0, seed=0, **kw):
  return jax.jit(lambda x, r: diffusion.training_loss(fn, x, r, cfg, **kw))(
      x0, jax.random.key(seed))


def test_default_config_validates_and_is_complete():
  cfg = diffusion.default_diffusion_config()
  diffusion.validate_diffusion_config(cfg, seq_len=1024)
  assert cfg.block_size == 16 and cfg.schedule == "loglinear" and cfg.weighting == "elbo"


@pytest.mark.parametrize("overrides,key", [
    (dict(block_size=5), "diffusion.block_size"),
    (dict(schedule="cosine"), "diffusion.schedule"),
    (dict(eps=0.6), "diffusion.eps"),
    (dict(weighting="1/t"), "diffusion.weighting"),
    (dict(reduction="mean"), "diffusion.reduction"),
    (dict(clip_min=-0.1), "diffusion.clip_min"),
    (dict(clip_max=5e-4), "diffusion.clip_max"),
    (dict(weighting="unit_all_masked"), "diffusion.weighting"),
    (dict(resample=True, clip_min=0.3, clip_max=0.45), "diffusion.clip_min"),
    (dict(complementary_mask=True), "diffusion.complementary_mask"),
    (dict(complementary_mask=True, weighting="none", time_conditioning=True),
     "diffusion.time_conditioning"),
    (dict(aux_ar_weight=-1.0), "diffusion.aux_ar_weight"),
])
def test_validation_errors_name_the_key(overrides, key):
  with pytest.raises(ValueError, match=key):
    diffusion.validate_diffusion_config(_cfg(**overrides), seq_len=N)


def test_validation_rejects_non_bool_flags_and_missing_keys():
  bad = ml_collections.ConfigDict({**_cfg().to_dict(), "token_shift": 1})
  with pytest.raises(ValueError, match="diffusion.token_shift"):
    diffusion.validate_diffusion_config(bad, seq_len=N)
  missing = _cfg().to_dict()
  del missing["resample"]
  with pytest.raises(ValueError, match="diffusion.resample"):
    diffusion.validate_diffusion_config(ml_collections.ConfigDict(missing), seq_len=N)


def test_unmasked_logits_carry_no_loss():
  x0, table = _tokens(), _table()
  base = _prev_token_fn(table)
  noise = jnp.asarray(1e3 * np.random.RandomState(5).normal(size=(B, N, V)), jnp.float32)

  def bumped(where_masked):
    def fn(xt, x0, want_clean=False):
      logits, _ = base(xt, x0)
      hit = (xt == V) if where_masked else (xt != V)  # MASK = V is inferred, not passed
      return logits + jnp.where(hit[..., None], noise, 0.0), None
    return fn

  cfg = _cfg()
  loss, metrics = _loss(base, cfg, x0)
  assert 0 < float(metrics["masked_fraction"]) < 1
  np.testing.assert_allclose(_loss(bumped(False), cfg, x0)[0], loss, rtol=1e-6)
  assert abs(float(_loss(bumped(True), cfg, x0)[0] - loss)) > 1.0  # the test can fail


def test_block_size_one_with_t_one_is_the_ar_nll():
  x0, table = _tokens(), _table()
  fn = _prev_token_fn(table)
  cfg = _cfg(block_size=1, clip_min=1.0, clip_max=1.0, weighting="unit_all_masked")
  loss, metrics = _loss(fn, cfg, x0)
  logp = np.asarray(jax.nn.log_softmax(fn(x0, x0)[0]))
  ar_nll = -np.take_along_axis(logp, np.asarray(x0)[..., None], -1).mean()
  np.testing.assert_allclose(loss, ar_nll, rtol=1e-5)
  np.testing.assert_allclose(metrics["masked_fraction"], 1.0)
  # nelbo for B = 1 is the same exact NLL, even from a clipped ELBO config whose schedule has
  # w(1) ≠ 1 (linear_md4: (1−2ε)/(1−ε)): t ≡ 1 comes with the unit weight.
  eval_cfg = _cfg(block_size=1, schedule="linear_md4")
  sums = jax.jit(lambda x, r: diffusion.nelbo(fn, x, r, eval_cfg))(
      x0, jax.random.key(3))
  np.testing.assert_allclose(sums["nll_sum"] / sums["token_count"], ar_nll, rtol=1e-5)


def test_block_size_seq_len_is_mdlm_with_per_sequence_t():
  x0, fn = _tokens(), _prev_token_fn(_table())
  per_block = _loss(fn, _cfg(block_size=N), x0, seed=4)[0]
  per_seq = _loss(fn, _cfg(block_size=N, per_block_t=False), x0, seed=4)[0]
  np.testing.assert_allclose(per_block, per_seq, rtol=1e-6)  # K = 1: the same draw
  assert np.isfinite(per_block)


def _one_hot_fn(shift):
  def fn(xt, x0, want_clean=False):
    target = jnp.concatenate([x0[:, 1:], x0[:, :1]], axis=1) if shift else x0
    return 30.0 * jax.nn.one_hot(target, V), None
  return fn


def test_nelbo_of_a_perfect_model_is_zero_and_of_uniform_is_log_v():
  x0 = _tokens(b=8, n=32)
  nelbo = lambda fn, cfg, x: jax.jit(lambda a, r: diffusion.nelbo(fn, a, r, cfg))(
      x, jax.random.key(6))
  sums = nelbo(_one_hot_fn(False), _cfg(), x0)
  assert int(sums["token_count"]) == 8 * 32
  summary = diffusion.summarize_nelbo(sums["nll_sum"], sums["token_count"])
  assert float(summary["nll"]) < 1e-6 and abs(float(summary["ppl_bound"]) - 1) < 1e-5


def test_nelbo_of_a_uniform_model_is_log_v_within_its_own_noise():
  """Uniform logits score log V per masked token. Under the loglinear schedule μ(t) = (1−ε)t
  and w(t) = 1/t, so E[w(t)·1{masked}] = 1 − ε exactly and E[NELBO] = (1 − ε)·log V.

  One draw is noisy (w = 1/t is heavy-tailed near t = ε_min), so the mean of k independent
  draws is compared with 4 standard errors estimated from the same draws.
  """
  cfg = _cfg(block_size=16)
  uniform = lambda xt, x, want_clean=False: (jnp.zeros(x.shape + (V,)), None)
  x0 = _tokens(b=64, n=128, seed=7)
  draw = jax.jit(lambda r: diffusion.nelbo(uniform, x0, r, cfg))
  k = 8
  ratios = []
  for i in range(k):
    sums = draw(jax.random.key(100 + i))
    ratios.append(float(sums["nll_sum"]) / float(sums["token_count"]) / math.log(V))
  mean, se = np.mean(ratios), np.std(ratios, ddof=1) / math.sqrt(k)
  assert se > 0 and 4 * se < 0.05, se  # the tolerance is informative, not loose
  assert abs(mean - (1 - cfg.eps)) < 4 * se, (mean, se)


def test_nelbo_scored_subset_sums_its_own_terms_of_the_same_draw():
  """The scored subset (an answer without padding) and its complement add up to the total."""
  x0 = _tokens(b=8, n=32)
  valid = jnp.ones(x0.shape, bool).at[:, :5].set(False)  # a prompt, never evaluated
  scored = jnp.ones(x0.shape, bool).at[:, 20:].set(False)  # padding after position 20
  fn = _prev_token_fn(_table())
  run = jax.jit(lambda s: diffusion.nelbo(fn, x0, jax.random.key(3), _cfg(), valid=valid,
                                          scored=s))
  part, rest = run(scored), run(~scored)
  assert int(part["scored_token_count"]) == 8 * 15 and int(rest["scored_token_count"]) == 8 * 12
  np.testing.assert_allclose(part["nll_sum"], rest["nll_sum"], rtol=1e-6)
  np.testing.assert_allclose(part["scored_nll_sum"] + rest["scored_nll_sum"], part["nll_sum"],
                             rtol=1e-5)
  assert 0 < float(part["scored_nll_sum"]) < float(part["nll_sum"])


def test_token_shift_predicts_from_previous_position():
  x0 = _tokens()
  shifted_cfg = _cfg(token_shift=True, weighting="none", reduction="labelled_mean")
  loss, metrics = _loss(_one_hot_fn(True), shifted_cfg, x0)
  assert float(metrics["masked_ce"]) < 1e-6 and float(loss) < 1e-6
  # Without the shift the same next-token head is wrong almost everywhere.
  plain_cfg = _cfg(weighting="none", reduction="labelled_mean")
  assert float(_loss(_one_hot_fn(True), plain_cfg, x0)[0]) > 1.0
  # Position 0 has no predictor, so under the shift it is never masked: with t ≡ 1 every
  # other token is masked, and a masked position 0 would be scored by z'[0] = z[0] (wrong).
  all_cfg = _cfg(token_shift=True, clip_min=1.0, clip_max=1.0, weighting="unit_all_masked")
  loss, metrics = _loss(_one_hot_fn(True), all_cfg, x0)
  assert float(loss) < 1e-6 and float(metrics["masked_fraction"]) == 1.0


def test_complementary_mask_doubles_the_batch_in_one_call():
  x0 = _tokens()
  calls = []

  def uniform(xt, x, want_clean=False):
    calls.append(xt.shape)
    return jnp.zeros(x.shape + (V,)), None

  cfg = _cfg(complementary_mask=True, weighting="none", reduction="labelled_mean")
  valid = jnp.ones((B, N), bool).at[:, -3:].set(False)
  eligible = jnp.ones((B, N), bool).at[:, :5].set(False)  # a "prompt"
  loss, metrics = _loss(uniform, cfg, x0, valid=valid, eligible=eligible, mask_id=V)
  assert calls == [(2 * B, N)]
  np.testing.assert_allclose(loss, math.log(V), rtol=1e-6)
  # Every eligible valid token is supervised in exactly one of the two copies.
  np.testing.assert_allclose(metrics["masked_fraction"], 0.5)


def test_aux_ar_loss_adds_weighted_clean_stream_nll():
  x0, table = _tokens(), _table()
  fn = _prev_token_fn(table)
  flags = []

  def spy(xt, x, want_clean=False):
    flags.append(want_clean)
    return fn(xt, x, want_clean)

  base, _ = _loss(spy, _cfg(), x0)
  loss, metrics = _loss(spy, _cfg(aux_ar_weight=0.5), x0)
  assert flags == [False, False, False, True]  # (eval_shape for V, forward) per config
  ar = diffusion.autoregressive_loss(table[x0], x0, jnp.ones_like(x0, bool))
  np.testing.assert_allclose(metrics["ar_loss"], ar, rtol=1e-6)
  np.testing.assert_allclose(loss, base + 0.5 * ar, rtol=1e-6)


def test_aux_ar_loss_targets_answers_only():
  """On SFT rows (``eligible`` = the answer) the auxiliary loss, like the diffusion loss,
  never trains on predicting prompt tokens (it used every valid pair)."""
  x0, table = _tokens(), _table()
  answer = jnp.zeros(x0.shape, bool).at[:, 10:].set(True)
  _, metrics = _loss(_prev_token_fn(table), _cfg(aux_ar_weight=0.5), x0, eligible=answer)
  clean = table[x0]
  answer_only = diffusion.autoregressive_loss(clean, x0, jnp.ones_like(answer), answer)
  np.testing.assert_allclose(metrics["ar_loss"], answer_only, rtol=1e-6)
  everything = diffusion.autoregressive_loss(clean, x0, jnp.ones_like(answer))
  assert abs(float(answer_only) - float(everything)) > 1e-3
  pairs = np.asarray(answer)[:, 1:]
  ce = -jax.nn.log_softmax(clean[:, :-1])
  ce = np.take_along_axis(np.asarray(ce), np.asarray(x0)[:, 1:, None], -1)[..., 0]
  np.testing.assert_allclose(answer_only, ce[pairs].mean(), rtol=1e-5)


def test_time_conditioning_passes_per_token_t():
  seen = {}

  def fn(xt, x0, want_clean=False, t=None):
    seen["t"] = t
    return jnp.zeros(x0.shape + (V,)), None

  diffusion.training_loss(fn, _tokens(), jax.random.key(0),
                          _cfg(time_conditioning=True, clip_min=0.2, clip_max=0.6),
                          mask_id=V)
  t = np.asarray(seen["t"])
  assert t.shape == (B, N) and t.min() >= 0.2 and t.max() <= 0.6
  np.testing.assert_array_equal(t.reshape(B, N // 4, 4), np.repeat(t[:, ::4, None], 4, -1))


def test_jitted_loss_traces_once_with_a_traced_clip_and_resampling():
  x0, fn = _tokens(), _prev_token_fn(_table())
  cfg = _cfg(resample=True, clip_min=0.25, clip_max=0.75)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(x, rng, clip):
    return diffusion.training_loss(fn, x, rng, cfg, clip=clip)

  clip = (jnp.float32(0.25), jnp.float32(0.75))
  for seed in range(2):
    loss, metrics = step(x0, jax.random.key(seed), clip)
    assert np.isfinite(loss)
    assert 0.25 <= float(metrics["masked_fraction"]) <= 0.75
  assert {"loss", "diffusion_loss", "masked_ce", "ce_t0", "ce_t3", "bits_per_token",
          "ppl_bound"} <= set(metrics)


def _split_stream_fn():
  """A clean stream that is a perfect next-token head and a noisy stream that is not: the
  noisy output at i − 1 sees [MASK] (it is a one-hot of x0[i + 1], two tokens ahead)."""
  def fn(xt, x0, want_clean=False):
    nxt = jnp.concatenate([x0[:, 1:], x0[:, :1]], axis=1)
    after = jnp.concatenate([x0[:, 2:], x0[:, :2]], axis=1)
    return 30.0 * jax.nn.one_hot(after, V), (30.0 * jax.nn.one_hot(nxt, V) if want_clean
                                             else None)
  return fn


def test_block_one_token_shift_nelbo_is_the_clean_next_token_nll():
  """At block size 1 under token shift every target is block-initial; the noisy output at
  i − 1 holds [MASK] (t ≡ 1), so reading it scored a two-ahead prediction, not the AR NLL
  the NELBO claims (an imported AR checkpoint evaluated at 3.58 instead of 2.60 nats)."""
  x0 = _tokens()
  cfg = _cfg(block_size=1, token_shift=True)
  sums = jax.jit(lambda x, r: diffusion.nelbo(_split_stream_fn(), x, r, cfg))(
      x0, jax.random.key(0))
  assert float(sums["nll_sum"]) / int(sums["token_count"]) < 1e-6


def test_shift_from_clean_reads_block_initial_targets_from_the_clean_stream():
  x0 = _tokens()
  base = dict(block_size=4, token_shift=True, clip_min=1.0, clip_max=1.0,
              weighting="unit_all_masked", reduction="labelled_mean")
  clean_cfg = _cfg(shift_from_clean=True, **base)
  loss_clean, m = _loss(_split_stream_fn(), clean_cfg, x0)
  loss_noisy, _ = _loss(_split_stream_fn(), _cfg(**base), x0)
  assert float(m["masked_fraction"]) == 1.0  # t ≡ 1: every scored target is masked
  # The target at i is read from output i − 1: a one-hot (logit 30) of x0[i] when that output
  # is the clean stream's (right), of x0[i + 1] when it is the noisy stream's. Position 0 is
  # never scored; positions 4, 8, 12 start blocks.
  x = np.asarray(x0)
  i = np.arange(1, N)
  first = i % 4 == 0
  noisy_pred = x[:, (i + 1) % N]
  ce = lambda pred: np.mean(np.where(pred == x[:, i], 0.0, 30.0))  # noqa: E731
  np.testing.assert_allclose(float(loss_noisy), ce(noisy_pred), atol=1e-3)
  np.testing.assert_allclose(float(loss_clean), ce(np.where(first, x[:, i], noisy_pred)),
                             atol=1e-3)
  assert float(loss_clean) < float(loss_noisy)
