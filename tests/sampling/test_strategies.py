"""Decoding strategies: hand-worked commit sets and loop-facing guarantees.

Logits are written as per-position ``(token, p)`` pairs: the proposal ``token`` gets
probability ``p`` and the other ``V - 1`` tokens share ``1 - p``, so raw confidences are the
``p`` values written here and the expected commit sets can be read off by hand.
"""
import functools
import inspect
import math
import pathlib

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bdiff.sampling import selection as sel
from bdiff.sampling import strategies as st
from bdiff.sampling import types as types_lib
from bdiff.sampling.strategies import StrategyConfig

V = 5
NEG = -1e9  # "zero probability" logit that keeps softmax exact and finite
# Row 0: nothing given. Row 1: position 0 given (its entry is never a candidate).
ROW0 = [(1, .95), (2, .60), (3, .85), (0, .92), (4, .40), (1, .70)]
ROW1 = [(0, .99), (4, .99), (2, .50), (3, .30), (1, .88), (0, .45)]
MASK_ALL = [[1, 1, 1, 1, 1, 1], [0, 1, 1, 1, 1, 1]]
MASK_B = [[1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1]]
MASK_C = [[0, 0, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1]]


def _logits(rows):
  out = np.empty((len(rows), len(rows[0]), V), np.float32)
  for r, row in enumerate(rows):
    for i, (tok, p) in enumerate(row):
      probs = np.full(V, (1 - p) / (V - 1))
      probs[tok] = p
      out[r, i] = np.log(probs)
  return jnp.asarray(out)


def _dist_logits(rows):
  """Rows of explicit probability vectors (zeros allowed) -> logits."""
  p = np.asarray(rows, np.float64)
  return jnp.asarray(np.where(p > 0, np.log(np.maximum(p, 1e-300)), NEG), jnp.float32)


LOGITS = _logits([ROW0, ROW1])


def _keys(b, seed=0):
  return jax.vmap(lambda i: jax.random.fold_in(jax.random.key(seed), i))(jnp.arange(b))


@functools.partial(jax.jit, static_argnums=0)
def _select(cfg, logits, masked, keys, step, state):
  return st.select(cfg, logits, masked, keys, step, state)


def run(cfg, masked, logits=LOGITS, step=0, state=None, seed=0):
  st.validate_strategy_config(cfg)
  masked = jnp.asarray(masked, bool)
  b, length = masked.shape
  state = st.init_state(cfg, b, length) if state is None else state
  commit, tokens, state = _select(cfg, logits, masked, _keys(b, seed),
                                  jnp.full((b,), step, jnp.int32), state)
  return np.asarray(commit).astype(int).tolist(), np.asarray(tokens), state


def sets(commit):
  return [[i for i, c in enumerate(row) if c] for row in commit]


# ------------------------------------------------------------------------------------------
# Proposals and primitives


def test_top_p_conventions_and_top_k_ties():
  z = _dist_logits([[.5, .3, .15, .05, 0.]])
  keep = lambda f: (np.asarray(f) > NEG / 2).astype(int).tolist()
  assert keep(sel.top_p_filter(z, .7, "n1")) == [[1, 1, 0, 0, 0]]  # crossing token kept
  assert keep(sel.top_p_filter(z, .7, "n2")) == [[1, 0, 0, 0, 0]]  # crossing token dropped
  tie = jnp.asarray([[2., 1., 1., 0., 0.]])
  assert keep(sel.top_k_filter(tie, 2)) == [[1, 1, 1, 0, 0]]


def test_propose_and_confidence_kinds():
  z = _dist_logits([[[.6, .3, .1, 0., 0.], [.2, .2, .2, .2, .2]]])
  tokens, prob = sel.propose(z, _keys(1))
  assert tokens.tolist() == [[0, 0]]
  np.testing.assert_allclose(prob, [[.6, .2]], atol=1e-6)
  probs = jax.nn.softmax(z)
  np.testing.assert_allclose(sel.confidence(probs, tokens, "margin", _keys(1)),
                             [[.3, 0.]], atol=1e-6)
  h0 = .6 * math.log(.6) + .3 * math.log(.3) + .1 * math.log(.1)
  np.testing.assert_allclose(sel.confidence(probs, tokens, "neg_entropy", _keys(1)),
                             [[h0, math.log(.2)]], atol=1e-5)
  r = sel.confidence(probs, tokens, "random", _keys(1))
  assert r.shape == (1, 2) and bool(jnp.all((r >= 0) & (r < 1)))


def test_rank_puts_minus_inf_candidates_before_non_candidates():
  score = jnp.asarray([[-jnp.inf, .9, .5, -jnp.inf]])
  cand = jnp.asarray([[False, False, True, True]])
  assert sel.topk_mask(score, cand, 2).astype(int).tolist() == [[0, 0, 1, 1]]


def _reference_order(score, cand):
  """Pure-Python order: candidates by descending score, ties to the lower position."""
  return sorted((i for i in range(len(score)) if cand[i]), key=lambda i: (-score[i], i))


def test_primitives_match_python_reference_with_ties():
  rng = np.random.default_rng(0)
  score = np.round(rng.random((6, 7)), 1).astype(np.float32)  # coarse values force ties
  cand = rng.random((6, 7)) < .6
  cand[0] = False
  k = np.asarray([3, 1, 2, 7, 0, 4], np.int32)  # includes n_cand < k
  top = np.asarray(sel.topk_mask(jnp.asarray(score), jnp.asarray(cand), jnp.asarray(k)))
  fac = np.asarray(sel.prefix_mask(jnp.asarray(score), jnp.asarray(cand),
                                   lambda j, c: (j == 0) | (c >= 1 - .8 / (j + 2))))
  thr = np.asarray(sel.threshold_mask(jnp.asarray(score), jnp.asarray(cand), .5, True))
  for r in range(6):
    order = _reference_order(score[r], cand[r])
    assert sorted(np.flatnonzero(top[r])) == sorted(order[:k[r]])
    n = 0
    while n < len(order) and (n == 0 or score[r, order[n]] >= 1 - .8 / (n + 2)):
      n += 1
    assert sorted(np.flatnonzero(fac[r])) == sorted(order[:n])
    assert list(np.flatnonzero(thr[r])) == [i for i in range(7) if cand[r, i] and score[r, i] > .5]


# ------------------------------------------------------------------------------------------
# Hand-worked commit sets, one strategy at a time


def test_static_llada_schedule_over_a_block():
  # Row 0: N=6, S=3 -> k = 2, 2, 2. Row 1: N=5 -> k = 2, 2, 1.
  cfg = StrategyConfig(name="static", steps=3)
  masked, state, got = np.asarray(MASK_ALL, bool), None, []
  for step in range(4):  # the 4th step finds an empty block
    commit, _, state = run(cfg, masked, step=step, state=state)
    got.append(sets(commit))
    masked &= ~np.asarray(commit, bool)
  assert got == [[[0, 3], [1, 4]], [[2, 5], [2, 5]], [[1, 4], [3]], [[], []]]


def test_static_random_remasking_counts():
  cfg = StrategyConfig(name="static", steps=4, confidence="random")
  commit, _, _ = run(cfg, MASK_ALL)
  assert [len(s) for s in sets(commit)] == [2, 2]  # 6 -> 2,2,1,1 ; 5 -> 2,1,1,1


def test_static_steps_zero_means_one_token_per_step():
  assert sets(run(StrategyConfig(name="static", steps=0), MASK_ALL)[0]) == [[0], [1]]


def test_dream_schedule():
  # S = 2: t = 1, s = 1 - .999/2 -> k = floor(N * .4995) = 2 for N = 6 and N = 5.
  cfg = StrategyConfig(name="dream", steps=2)
  commit, _, _ = run(cfg, MASK_ALL)
  assert sets(commit) == [[0, 3], [1, 4]]
  masked = np.asarray(MASK_ALL, bool) & ~np.asarray(commit, bool)
  assert sets(run(cfg, masked, step=1)[0]) == [[1, 2, 4, 5], [2, 3, 5]]  # last step: all


def test_sequential_and_ar():
  cfg = StrategyConfig(name="sequential", steps=3)
  assert sets(run(cfg, MASK_ALL)[0]) == [[0, 1], [1, 2]]
  commit, tokens, _ = run(StrategyConfig(name="ar"), MASK_B)
  assert sets(commit) == [[0], [2]]
  assert tokens[0, 0] == 1 and tokens[1, 2] == 2


def test_sdar_dynamic():
  # k = 2: row 0 has two c > .9 -> both; row 1 has one -> TOPK(2).
  assert sets(run(StrategyConfig(name="sdar_dynamic", steps=3), MASK_ALL)[0]) == [
      [0, 3], [1, 4]]
  # k = 1: two c > .9 in row 0 both go (more than k_s).
  assert sets(run(StrategyConfig(name="sdar_dynamic", steps=6), MASK_ALL)[0]) == [
      [0, 3], [1]]


def test_threshold_fast_dllm_v1_with_top1_fallback():
  commit, tokens, _ = run(StrategyConfig(name="threshold", threshold=.9), MASK_B)
  assert sets(commit) == [[0, 3], [4]]  # row 1: nothing >= .9, so its top-1
  assert tokens[0, 0] == 1 and tokens[0, 3] == 0 and tokens[1, 4] == 1


def test_threshold_strictness_and_ties():
  half = [[.5, .5, 0., 0., 0.]] * 2 + [[.3, .2, .2, .2, .1]] * 2
  logits = _dist_logits([half, half])  # c = exactly .5, .5, .3, .3
  masked = [[1, 1, 1, 1], [0, 1, 1, 1]]
  assert sets(run(StrategyConfig(name="threshold", threshold=.5), masked, logits)[0]) == [
      [0, 1], [1]]
  strict = StrategyConfig(name="threshold", threshold=.5, strict=True)
  assert sets(run(strict, masked, logits)[0]) == [[0], [1]]  # top-1, lower position on ties


def test_fixed_k():
  assert sets(run(StrategyConfig(name="fixed_k", k=2), MASK_B)[0]) == [[0, 3], [2, 4]]


def test_factor_rule():
  # f = 1: thr_n = 1 - 1/(n+1) = -, .667, .75, .8; row 0 sorted .95 .92 .85 .70 -> n* = 3.
  cfg = StrategyConfig(name="factor", factor=1.0)
  assert sets(run(cfg, MASK_B)[0]) == [[0, 2, 3], [4]]
  # Only the last candidate fails: the reference quirk commits it too.
  masked = [[1, 1, 1, 1, 1, 1], [0, 0, 1, 0, 1, 0]]
  assert sets(run(cfg, masked)[0])[1] == [4]
  quirk = StrategyConfig(name="factor", factor=1.0, factor_quirk=True)
  assert sets(run(quirk, masked)[0])[1] == [2, 4]


SHARP, TWO, UNIF = [1., 0, 0, 0, 0], [.5, .5, 0, 0, 0], [.2] * 5
P95 = [.95, .0125, .0125, .0125, .0125]  # H = .268
# Entropies: sharp 0, two ln 2 = .693, unif ln 5 = 1.609, p95 .268.
# Sampled-token terms -p log p: sharp 0, two .347, unif .322, p95 .049.
EB_LOGITS = _dist_logits([[SHARP, TWO, SHARP, UNIF, P95, TWO],
                          [SHARP, TWO, UNIF, TWO, UNIF, UNIF]])


def test_entropy_bounded_is_the_eb_sampler_bound():
  # Sorted entropies row 0: 0 (0), 0 (2), .268 (4), .693 (1), .693 (5), 1.609 (3). The EB
  # bound is on the sum *before* each position (Σ H - max H): .268 <= .35 lets position 1 in,
  # .961 keeps 5 out. (A plain cumulative sum <= .35 would stop after position 4.)
  small = StrategyConfig(name="entropy_bounded", gamma=.35)
  assert sets(run(small, MASK_ALL, EB_LOGITS)[0]) == [[0, 1, 2, 4], [1]]
  # Row 1: .693, .693, 1.609 ...: sums before them 0, .693, 1.386 <= 1.4.
  big = StrategyConfig(name="entropy_bounded", gamma=1.4)
  assert sets(run(big, MASK_ALL, EB_LOGITS)[0]) == [[0, 1, 2, 4, 5], [1, 2, 3]]


def test_entropy_bounded_strictness_at_the_bound():
  # gamma = 0 and zero-entropy positions: sums before them are exactly 0.
  logits = _dist_logits([[SHARP, SHARP, TWO, SHARP, UNIF, TWO]] * 2)
  loose = StrategyConfig(name="entropy_bounded", gamma=0.)  # reference: Σ H - max H <= γ
  assert sets(run(loose, MASK_ALL, logits)[0]) == [[0, 1, 2, 3], [1, 2, 3]]
  strict = StrategyConfig(name="entropy_bounded", gamma=0., strict=True)
  assert sets(run(strict, MASK_ALL, logits)[0]) == [[0], [1]]
  # SDAR's released rule is strict (< γ) by default: nothing after the forced first.
  sdar = StrategyConfig(name="entropy_bounded_sdar", gamma=0.)
  assert sets(run(sdar, MASK_ALL, logits)[0]) == [[0], [1]]
  sdar_loose = StrategyConfig(name="entropy_bounded_sdar", gamma=0., strict=False)
  assert sets(run(sdar_loose, MASK_ALL, logits)[0]) == [[0, 1, 3], [1, 3]]


def test_entropy_bounded_sdar_uses_the_sampled_token_term():
  # Row 0 sorted by -p log p: 0 (0), 0 (2), .049 (4), .322 (3), .347 (1), .347 (5); cumulative
  # .371 < .4 takes the *uniform* position 3, which the true entropy (1.609) ranks last.
  cfg = StrategyConfig(name="entropy_bounded_sdar", gamma=.4)
  assert sets(run(cfg, MASK_ALL, EB_LOGITS)[0]) == [[0, 2, 3, 4], [2]]
  eb = StrategyConfig(name="entropy_bounded", gamma=.4)
  assert sets(run(eb, MASK_ALL, EB_LOGITS)[0]) == [[0, 1, 2, 4], [1]]


def test_fast_dllm_v2_sub_blocks_strict():
  # Sub-block size 2, first sub-block done: only positions 2, 3 compete; .92 > .9 in row 0,
  # row 1 falls back to its sub-block's top-1 although position 4 has .88.
  cfg = StrategyConfig(name="fast_dllm_v2", sub_block=2, threshold=.9)
  assert sets(run(cfg, MASK_C)[0]) == [[3], [2]]
  assert sets(run(cfg, MASK_ALL)[0]) == [[0], [1]]


def test_dcd_window():
  cfg = StrategyConfig(name="dcd", window=2, threshold=.9)
  assert sets(run(cfg, MASK_ALL)[0]) == [[0], [1]]  # .92 at 3 is outside the window
  assert sets(run(cfg, MASK_B)[0]) == [[0], [2]]
  capped = StrategyConfig(name="dcd", window=3, max_window=1, threshold=.5)
  assert sets(run(capped, MASK_B)[0]) == [[0], [2]]


# Scores: c = .75 (above .5), then .5, .25 and .2, exact in float32.
EXACT = [[.75, .25, 0, 0, 0], [.5, .5, 0, 0, 0], [.25, .25, .25, .25, 0], [.2] * 5]


def test_local_leap_honours_strict():
  c75, c50, c25, c20 = EXACT
  logits = _dist_logits([[c75, c25, c20, c20, c20, c20], [c50, c25, c20, c20, c20, c20]])
  masked = [[1] * 6, [1] * 6]
  cfg = dict(name="local_leap", threshold=.5, relaxed_threshold=.25, radius=1)
  # Reference (>=): row 0 anchor 0 pulls in neighbour 1 (c = τ_relaxed); row 1 likewise,
  # its anchor sitting exactly at τ.
  assert sets(run(StrategyConfig(**cfg), masked, logits)[0]) == [[0, 1], [0, 1]]
  # strict (>): the neighbour at exactly τ_relaxed stays out; row 1 has no anchor at all and
  # falls back to its top-1.
  assert sets(run(StrategyConfig(**cfg, strict=True), masked, logits)[0]) == [[0], [0]]


def test_bacd_honours_strict():
  _, c50, c25, _ = EXACT
  logits = _dist_logits([[c25, c50, c50, c25, c25, c25]] * 2)
  masked = [[1] * 6, [1] * 6]
  hist = {"h_sum": jnp.asarray([1., 1.]), "h_cnt": jnp.asarray([2, 2], jnp.int32)}  # τ = .5
  cfg = dict(name="bacd", threshold_low=.5)
  # Reference (>=): both positions at exactly τ.
  assert sets(run(StrategyConfig(**cfg), masked, logits, step=1, state=hist)[0]) == [
      [1, 2], [1, 2]]
  # strict (>): none passes, so the top-1 (lower position on the tie).
  assert sets(run(StrategyConfig(**cfg, strict=True), masked, logits, step=1,
                  state=hist)[0]) == [[1], [1]]


def test_local_leap():
  cfg = StrategyConfig(name="local_leap", threshold=.9, relaxed_threshold=.75, radius=1)
  # Row 0: anchors 0, 3; neighbour 2 (.85) relaxed in, 5 (.70) too low and too far.
  # Row 1: anchor 1; 4 (.88) passes .75 but is 3 away.
  assert sets(run(cfg, MASK_ALL)[0]) == [[0, 2, 3], [1]]
  wide = StrategyConfig(name="local_leap", threshold=.9, relaxed_threshold=.75, radius=3)
  assert sets(run(wide, MASK_ALL)[0]) == [[0, 2, 3], [1, 4]]


def test_bacd():
  cfg = StrategyConfig(name="bacd", threshold_low=.6, threshold_high=.9)
  # First step: tau = clip(max c) -> .9 in row 0 ({.95, .92}); .88 in row 1 (only it).
  commit, _, state = run(cfg, MASK_B)
  assert sets(commit) == [[0, 3], [4]]
  np.testing.assert_allclose(state["h_sum"], [1.87, .88], atol=1e-5)
  assert state["h_cnt"].tolist() == [2, 1]
  # Later step: tau = mean history (.65 for row 0); row 1 with empty history -> max rule.
  hist = {"h_sum": jnp.asarray([1.3, 0.]), "h_cnt": jnp.asarray([2, 0], jnp.int32)}
  assert sets(run(cfg, MASK_B, step=1, state=hist)[0]) == [[0, 2, 3, 5], [4]]
  # A block start ignores stale history.
  assert sets(run(cfg, MASK_B, step=0, state=hist)[0]) == [[0, 3], [4]]


def _prophet_logits():
  row0 = [[8., 0, 0, 0, 0]] * 6  # gap 8 everywhere
  row1 = [[0, 3., 0, 0, 0]] * 6  # gap 3
  return jnp.asarray([row0, row1], jnp.float32)


def test_prophet_early_commit():
  cfg = StrategyConfig(name="prophet", steps=4)
  commit, tokens, state = run(cfg, MASK_ALL, _prophet_logits())
  # pi = 0 -> tau 7.5: row 0 all-in; row 1 base rule k = 2 (N=5, S=4), ties -> low positions.
  assert sets(commit) == [[0, 1, 2, 3, 4, 5], [1, 2]]
  assert state["fired"].tolist() == [True, False]
  assert tokens[0].tolist() == [0] * 6
  # pi = 3/4 -> tau 2.5: gap 3 fires in row 1.
  masked = [[0] * 6, [0, 0, 0, 1, 1, 1]]
  commit, tokens, state = run(cfg, masked, _prophet_logits(), step=3, state=state)
  assert sets(commit) == [[], [3, 4, 5]] and state["fired"].tolist() == [False, True]
  assert tokens[1, 3:].tolist() == [1, 1, 1]


def test_first_hitting_one_uniform_position():
  cfg = StrategyConfig(name="first_hitting", temperature=1.0, top_p=.9, nucleus_mode="n2")
  b = 300
  masked = np.zeros((b, 6), bool)
  masked[:, [1, 3, 4]] = True
  logits = jnp.broadcast_to(LOGITS[:1], (b, 6, V))
  commit, _, state = run(cfg, masked, logits)
  commit = np.asarray(commit)
  assert commit.sum(1).tolist() == [1] * b
  freq = commit.sum(0)
  assert freq[[0, 2, 5]].tolist() == [0, 0, 0] and all(60 <= f <= 140 for f in freq[[1, 3, 4]])
  assert bool(jnp.all((state["t"] > 0) & (state["t"] < 1)))


def test_ancestral_unmask_probability_and_reveals():
  u = st.scheduled.unmask_probability(jnp.arange(5), 4)
  np.testing.assert_allclose(u, [1 / 4, 1 / 3, 1 / 2, 1, 1], atol=1e-6)
  u = st.scheduled.unmask_probability(jnp.asarray([0]), 2, "cosine")
  np.testing.assert_allclose(u, [1 - math.cos(math.pi / 4)], atol=1e-6)
  # Last step reveals every candidate.
  commit, _, _ = run(StrategyConfig(name="ancestral", steps=4, temperature=1.), MASK_B, step=3)
  assert sets(commit) == [[0, 1, 2, 3, 4, 5], [2, 3, 4, 5]]
  # Exact mode at u = 1/4: about a quarter revealed; the greedy variant reveals argmax tokens.
  b = 200
  idle = StrategyConfig(name="ancestral_greedy", steps=4, allow_idle=True)
  commit, tokens, _ = run(idle, np.ones((b, 6), bool), jnp.tile(LOGITS[:1], (b, 1, 1)))
  frac = np.mean(commit)
  assert 0.2 < frac < 0.3
  argmax = np.asarray([t for t, _ in ROW0])
  assert np.all(np.where(np.asarray(commit, bool), tokens == argmax, True))


def _sampled_tokens(name, b=300, **kw):
  """Tokens committed by one step over ``b`` copies of row 0, with their positions."""
  cfg = StrategyConfig(name=name, **kw)
  logits = jnp.broadcast_to(LOGITS[:1], (b, 6, V))
  commit, tokens, _ = run(cfg, np.ones((b, 6), bool), logits)
  commit = np.asarray(commit, bool)
  return tokens[commit], np.nonzero(commit)[1]


ARGMAX0 = np.asarray([t for t, _ in ROW0])


@pytest.mark.parametrize("name, kw", [("first_hitting", {}),
                                      ("ancestral", dict(steps=1))])
def test_sampling_references_sample_at_temperature_zero(name, kw):
  # BD3-LM and MD4/MDLM have no greedy mode: the default temperature 0 means their T = 1.
  # Row 0's proposals have p = .95 .6 .85 .92 .4 .7, so about a quarter of draws are not
  # the argmax (an argmax rule gives none).
  tokens, pos = _sampled_tokens(name, **kw)
  assert np.mean(tokens != ARGMAX0[pos]) > .1
  # The named deviation takes the argmax.
  tokens, pos = _sampled_tokens(name + "_greedy", **kw)
  np.testing.assert_array_equal(tokens, ARGMAX0[pos])


def test_first_hitting_uses_bd3lm_nucleus_by_default():
  # p = [.5, .3, .15, .05, 0] at every position, top_p = .7: BD3-LM's nucleus drops the
  # token that crosses .7 (keeps only token 0); the other convention keeps tokens 0 and 1.
  logits = jnp.broadcast_to(_dist_logits([[.5, .3, .15, .05, 0.]]), (300, 6, V))
  masked = np.ones((300, 6), bool)
  commit, tokens, _ = run(StrategyConfig(name="first_hitting", top_p=.7), masked, logits)
  assert set(tokens[np.asarray(commit, bool)].tolist()) == {0}
  n1 = StrategyConfig(name="first_hitting", top_p=.7, nucleus_mode="n1")
  commit, tokens, _ = run(n1, masked, logits)
  assert set(tokens[np.asarray(commit, bool)].tolist()) == {0, 1}


def test_adablock_block_length():
  # Proposals row 0: [1, 2, 3, 0, 4, 1] -> delimiter 3 at position 2 with c = .85.
  # Row 1: delimiter at position 3 with c = .30 < .35 -> default min(B0, remaining).
  cfg = StrategyConfig(name="adablock", delimiter_ids=(3,), delimiter_threshold=.35,
                       block_length=4)
  st.validate_strategy_config(cfg)
  f = lambda cfg, masked, remaining: st.adablock_block_length(
      cfg, LOGITS, jnp.asarray(masked, bool), _keys(2), jnp.asarray(remaining)).tolist()
  assert f(cfg, MASK_ALL, [10, 10]) == [3, 4]
  assert f(cfg, MASK_C, [10, 10]) == [3, 4]
  assert f(cfg, [[1, 1, 0, 1, 1, 1], MASK_ALL[1]], [10, 10]) == [4, 4]  # pos 2 not masked
  assert f(cfg, MASK_ALL, [2, 1]) == [2, 1]  # window and budget shrink to the remaining
  near = StrategyConfig(name="adablock", delimiter_ids=(3,), lookahead=2, block_length=10)
  assert f(near, MASK_ALL, [10, 10]) == [6, 6]  # delimiter outside look-ahead; cap W = 6


# ------------------------------------------------------------------------------------------
# Reference conventions (confidence_from, strict, nucleus, filter order) per strategy


# Strategies whose reference code scores the tempered, filtered sampling distribution
# (SDAR, Dream, DCD, Fast-dLLM v2, TDAR/lmdeploy); all others score the raw softmax.
SAMPLING_SCORED = {"sequential", "sdar_dynamic", "dream", "fixed_k", "fast_dllm_v2", "dcd",
                   "entropy_bounded_sdar", "bacd"}
STRICT = {"sdar_dynamic", "fast_dllm_v2", "entropy_bounded_sdar"}


def test_reference_conventions_are_the_defaults():
  for name in st.STRATEGIES:
    cfg = st.resolve(StrategyConfig(name=name))
    assert cfg.confidence_from == ("sampling" if name in SAMPLING_SCORED else "raw"), name
    assert cfg.strict == (name in STRICT), name
    assert cfg.nucleus_mode == ("n2" if name.startswith("first_hitting") else "n1"), name
    assert cfg.filter_order == ("p_then_k" if name == "dream" else "k_then_p"), name
  # An explicit setting wins over the reference.
  cfg = st.resolve(StrategyConfig(name="bacd", confidence_from="raw", strict=True))
  assert (cfg.confidence_from, cfg.strict) == ("raw", True)


def test_confidence_from_sampling_distribution_by_default():
  # p = [.5, .3, .15, .05, 0] at positions 0 and 1, top_p = .7: the nucleus keeps tokens 0 and
  # 1, so the sampling distribution gives the proposal .5 / .8 = .625 > .6 while the raw
  # softmax gives .5. DCD scores the sampling distribution (filtered even at T = 0): both
  # positions of its window go.
  logits = _dist_logits([[[.5, .3, .15, .05, 0.]] * 2 + [[.2] * 5] * 4] * 2)
  cfg = dict(name="dcd", window=2, threshold=.6, top_p=.7)
  assert sets(run(StrategyConfig(**cfg), MASK_ALL, logits)[0]) == [[0, 1], [1]]
  raw = StrategyConfig(**cfg, confidence_from="raw")
  assert sets(run(raw, MASK_ALL, logits)[0]) == [[0], [1]]  # .5: top-1 only


# ------------------------------------------------------------------------------------------
# Loop-facing guarantees for every registered strategy


ALL_CONFIGS = [
    StrategyConfig(name="static", steps=3),
    StrategyConfig(name="static", steps=3, confidence="random"),
    StrategyConfig(name="sequential", steps=2),
    StrategyConfig(name="sdar_dynamic", steps=3, confidence_from="sampling", temperature=1.),
    StrategyConfig(name="dream", steps=3, confidence="margin", confidence_from="sampling"),
    StrategyConfig(name="prophet", steps=0),
    StrategyConfig(name="ancestral", steps=5, temperature=1., top_p=.9, nucleus_mode="n2"),
    StrategyConfig(name="ancestral_greedy", steps=4),
    StrategyConfig(name="first_hitting", top_p=.9),
    StrategyConfig(name="first_hitting_greedy"),
    StrategyConfig(name="ar"),
    StrategyConfig(name="fixed_k", k=2, confidence="margin"),
    StrategyConfig(name="threshold", threshold=.3),
    StrategyConfig(name="fast_dllm_v2", sub_block=3, confidence_from="sampling", top_p=.95),
    StrategyConfig(name="dcd", window=3),
    StrategyConfig(name="adablock", delimiter_ids=(2,)),
    StrategyConfig(name="factor", factor=1.5, confidence="neg_entropy"),
    StrategyConfig(name="entropy_bounded", gamma=.5, temperature=.7, top_k=3),
    StrategyConfig(name="entropy_bounded_sdar", gamma=.5, temperature=1., top_p=.9),
    StrategyConfig(name="local_leap", threshold=.4, relaxed_threshold=.3, radius=2),
    StrategyConfig(name="bacd", confidence_from="sampling"),
]


def test_every_strategy_is_covered():
  assert {c.name for c in ALL_CONFIGS} == set(st.STRATEGIES)


def _random_case(b=4, length=7, seed=3):
  rng = np.random.default_rng(seed)
  logits = 3 * rng.standard_normal((b, length, V)).astype(np.float32)
  masked = rng.random((b, length)) < .6
  masked[0], masked[1] = False, True  # a finished row and a full one
  return jnp.asarray(logits), jnp.asarray(masked)


@pytest.mark.parametrize("cfg", ALL_CONFIGS, ids=lambda c: c.name)
def test_guarantees_and_row_independence(cfg):
  st.validate_strategy_config(cfg)
  logits, masked = _random_case()
  b, length = masked.shape
  keys = _keys(b, seed=7)
  # Second batch (same shape, so no recompile): rows 1 and 3 swap places, rows 0 and 2 are
  # replaced by other content. A row's decision must follow the row, not its neighbours.
  other_logits, other_masked = _random_case(seed=11)
  perm = jnp.asarray([0, 3, 2, 1])
  logits2 = logits[perm].at[0].set(other_logits[0]).at[2].set(other_logits[2])
  state = st.init_state(cfg, b, length)
  for step in range(2):
    masked2 = masked[perm].at[0].set(other_masked[3]).at[2].set(other_masked[2])
    steps = jnp.full((b,), step)
    commit, tokens, new_state = _select(cfg, logits, masked, keys, steps, state)
    assert commit.shape == masked.shape and tokens.dtype == jnp.int32
    assert not bool(jnp.any(commit & ~masked))  # committed ⊆ masked
    has = jnp.any(masked, -1)
    assert bool(jnp.all(jnp.any(commit, -1) == has))  # progress, and nothing when empty
    state2 = jax.tree.map(lambda x: x[perm], state)
    c2, t2, s2 = _select(cfg, logits2, masked2, keys[perm], steps, state2)
    for r in (1, 3):
      np.testing.assert_array_equal(c2[r], commit[perm[r]])
      np.testing.assert_array_equal(t2[r], tokens[perm[r]])
      jax.tree.map(lambda a, x: np.testing.assert_array_equal(a[r], x[perm[r]]), s2, new_state)
    masked, state = masked & ~commit, new_state


@pytest.mark.parametrize("cfg", ALL_CONFIGS, ids=lambda c: c.name)
def test_block_terminates_within_budget(cfg):
  """Scheduled strategies empty a block in ``steps`` steps (0 = L), the others in <= L."""
  logits, masked = _random_case()  # same shapes as above: compiled once per config
  b, length = masked.shape
  budget = (cfg.steps or length) if st.STRATEGIES[cfg.name].scheduled else length
  state = st.init_state(cfg, b, length)
  for step in range(budget):
    commit, _, state = _select(cfg, logits, masked, _keys(b, step), jnp.full((b,), step), state)
    masked = masked & ~commit
  assert not bool(jnp.any(masked))


def test_jit_traces_once_per_shape():
  cfg = StrategyConfig(name="bacd")

  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(logits, masked, keys, s, state):
    return st.select(cfg, logits, masked, keys, s, state)

  logits, masked = _random_case()
  state = st.init_state(cfg, 4, 7)
  for s in range(3):
    _, _, state = step(logits + s, masked, _keys(4, s), jnp.full((4,), s), state)


def test_sweepable_knobs_are_traced_leaves():
  """A threshold sweep reuses one compilation when cfg is a traced pytree argument."""

  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(cfg, logits, masked, keys):
    return st.select(cfg, logits, masked, keys, 0, {})

  got = [sets(step(StrategyConfig(name="threshold", threshold=tau), LOGITS,
                   jnp.asarray(MASK_B, bool), _keys(2))[0].astype(int).tolist())
         for tau in (.9, .8)]
  assert got == [[[0, 3], [4]], [[0, 2, 3], [4]]]


# ------------------------------------------------------------------------------------------
# Validation


@pytest.mark.parametrize("kwargs, key", [
    (dict(name="nope"), "sample.strategy"),
    (dict(threshold=0.), "sample.threshold"),
    (dict(threshold=1.5), "sample.threshold"),
    (dict(name="static", steps=-1), "sample.steps"),
    (dict(top_p=0.), "sample.top_p"),
    (dict(temperature=-1.), "sample.temperature"),
    (dict(confidence="max"), "sample.confidence"),
    (dict(confidence_from="tempered"), "sample.confidence_from"),
    (dict(nucleus_mode="n3"), "sample.nucleus_mode"),
    (dict(name="fast_dllm_v2"), "sample.sub_block"),
    (dict(name="dcd"), "sample.window"),
    (dict(name="adablock"), "sample.delimiter_ids"),
    (dict(name="static", sub_block=4), "sample.sub_block"),
    (dict(name="threshold", allow_idle=True), "sample.allow_idle"),
    (dict(threshold_low=.95, threshold_high=.9), "sample.threshold_low"),
    (dict(prophet_gaps=(1., 2.)), "sample.prophet_gaps"),
    (dict(factor=0.), "sample.factor"),
    (dict(k=0), "sample.k"),
    (dict(filter_order="k_p"), "sample.filter_order"),
    (dict(name="first_hitting_greedy", temperature=1.), "sample.temperature"),
    (dict(name="ancestral_greedy", temperature=.5), "sample.temperature"),
    (dict(name="first_hitting", allow_idle=True), "sample.allow_idle"),
])
def test_validation_names_the_key(kwargs, key):
  with pytest.raises(ValueError, match=key.replace(".", r"\.")):
    st.validate_strategy_config(StrategyConfig(**kwargs))


def test_unknown_strategy_lists_valid_names_and_from_mapping():
  with pytest.raises(ValueError, match="bacd"):
    st.validate_strategy_config(StrategyConfig(name="nope"))
  cfg = StrategyConfig.from_mapping({"strategy": "prophet", "prophet_gaps": [3., 2., 1.],
                                     "batch_size": 8})
  assert cfg.name == "prophet" and cfg.prophet_gaps == (3., 2., 1.)
  st.validate_strategy_config(cfg)


# ------------------------------------------------------------------------------------------
# Documentation


def test_strategy_docs_cite_public_sources_only():
  """Docstrings cite papers and public repositories, not notes outside the repository."""
  for module in (st, st.adaptive, st.scheduled, sel, types_lib):
    src = inspect.getsource(module)
    for ref in ("§", "specs/", "DESIGN.md"):
      assert ref not in src, (module.__name__, ref)


def test_every_strategy_is_documented():
  doc = (pathlib.Path(__file__).parents[2] / "docs" / "decoding.md").read_text()
  for name in st.STRATEGIES:
    assert f"`{name}`" in doc, name
