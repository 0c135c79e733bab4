"""impl="tokamax": the exact translation of every mask to tokamax's range form, its mask
fields and errors (no tokamax needed), and the whole wrapper through tokamax's XLA
implementation (skipped where the optional tokamax package is absent)."""
import importlib.util
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bdiff import attention, mask_ranges, masks
from bdiff.models import transformer
from experiments import kernel_bench

HAS_TOKAMAX = importlib.util.find_spec("tokamax") is not None
needs_tokamax = pytest.mark.skipif(not HAS_TOKAMAX, reason="optional tokamax package absent "
                                   "(pip install -e .[gpu]); CI runs without it")

RANGE_MASKS = [  # each row's keys are one interval: no bool mask needed
    masks.full(5, 7), masks.causal(8), masks.causal(6, 10, q_offset=4),
    masks.sliding_window(12, 12, 3), masks.sliding_window(7, 15, 2, 1, q_offset=5),
    masks.sliding_window(6, 8, 1, 0, q_offset=10),  # rows past the keys: empty
    masks.block_causal(16, 16, 4), masks.block_causal(6, 14, 4, q_offset=8),
    masks.block_causal(5, 13, 4, q_offset=6), masks.block_causal(7, 7, 3),
    masks.cache_window(8, 4, 4), masks.cache_window(6, 5, 3), masks.cache_window(4, 0, 2),
    masks.causal(12) & masks.sliding_window(12, 12, 4),
    masks.sliding_window(10, 10, 5, 2) & masks.sliding_window(10, 10, 2, 4, q_offset=1),
    masks.block_causal(16, 16, 4) & masks.sliding_window(16, 16, 5),
    masks.causal(9, 9, q_offset=2) & masks.block_causal(9, 9, 3),
    masks.bd3_training(4, 4),  # one block: noisy rows see only their own block
    masks.bd3_training(8, 4),  # two blocks: the last noisy block touches the clean keys before it
]
BOOL_MASKS = [  # BD3 noisy rows see two disjoint intervals: the dense rule is needed
    masks.bd3_training(12, 4), masks.bd3_training(12, 3), masks.context_causal(8, 2),
    masks.context_causal(9, 3), masks.bd3_training(8, 2) & masks.full(16, 16),
    masks.bd3_training(12, 4) & masks.sliding_window(24, 24, 10, 10),
]


def expand(form):
  """tokamax's rule, written from its ``Mask`` docstring: the AND of the parts given."""
  q = np.arange(form.q_len)[:, None]
  k = np.arange(form.kv_len)[None, :]
  out = np.ones((form.q_len, form.kv_len), bool)
  if form.k_start is not None:
    out &= k >= np.asarray(form.k_start)[:, None]
  if form.k_end is not None:
    out &= k < np.asarray(form.k_end)[:, None]
  if form.causal_offset is not None:
    out &= q >= k - form.causal_offset
    if form.causal_window is not None:
      out &= q < k - form.causal_offset + form.causal_window
  if form.bool_mask is not None:
    out &= form.bool_mask
  return out


def mask_id(m):
  return f"{type(m).__name__}{m.shape}"


@pytest.mark.parametrize("mask", RANGE_MASKS + BOOL_MASKS, ids=mask_id)
def test_translation_is_exact(mask):
  np.testing.assert_array_equal(expand(mask_ranges.to_ranges(mask)), mask.dense())


@pytest.mark.parametrize("mask", RANGE_MASKS, ids=mask_id)
def test_interval_masks_need_no_bool_mask(mask):
  """The range and causal parts are what tokamax's kernels skip tiles on; a dense bool mask
  would cost a [q, kv] read and lose the plain-causal fast path."""
  assert mask_ranges.to_ranges(mask).bool_mask is None


def test_plain_causal_stays_tokamax_causal():
  form = mask_ranges.to_ranges(masks.causal(8))
  assert (form.causal_offset, form.causal_window, form.k_start, form.k_end) == (0, None, None,
                                                                                 None)


@pytest.mark.parametrize("mask", BOOL_MASKS, ids=mask_id)
def test_bool_masks_come_with_each_rows_tightest_range(mask):
  """tokamax's forward visits the key tiles in [min k_start, max k_end) of a query tile, so the
  ranges must be tight for it to skip what BD3 leaves empty."""
  form = mask_ranges.to_ranges(mask)
  dense = mask.dense()
  assert form.bool_mask is not None and dense.any(axis=1).all()
  np.testing.assert_array_equal(form.k_start, dense.argmax(axis=1))
  np.testing.assert_array_equal(form.k_end, mask.kv_len - dense[:, ::-1].argmax(axis=1))


def test_to_ranges_rejects_arrays():
  with pytest.raises(TypeError, match="bdiff.masks.Mask"):
    mask_ranges.to_ranges(np.ones((4, 4), bool))


def expand_fields(fields, q_len, kv_len):
  """Dense [b or 1, h or 1, q, kv] rule of tokamax ``Mask`` fields (broadcast, as tokamax does)."""
  offset, window = fields.causal or (None, None)
  to_np = lambda x: None if x is None else np.asarray(x)
  out = np.ones((1, 1, q_len, kv_len), bool)
  out = out & expand(mask_ranges.RangeForm(q_len, kv_len, causal_offset=offset,
                                           causal_window=window))
  k = np.arange(kv_len)
  if fields.k_start is not None:
    out = out & (k >= to_np(fields.k_start)[..., None])
  if fields.k_end is not None:
    out = out & (k < to_np(fields.k_end)[..., None])
  return out if fields.bool_mask is None else out & to_np(fields.bool_mask)


SEG = (np.array([[0, 0, 1, 1, 1, 2], [3, 3, 3, 3, 0, 0]]),  # q segment 2 has no key: empty
       np.array([[0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 1, 1], [3, 3, 3, 3, 3, 3, 0, 0, 0, 0, 0, 0]]))
FIELD_CASES = {
    "static": (masks.sliding_window(6, 12, 1, 0, q_offset=9), None),
    "static_no_empty": (masks.bd3_training(3, 1), None),
    "segments": (masks.cache_window(6, 6, 3), SEG),
    "explicit_array": (np.arange(72).reshape(1, 6, 12) % 5 == 0, SEG),
}


@pytest.mark.parametrize("case", FIELD_CASES)
def test_tokamax_mask_fields_are_exact_and_leave_no_row_empty(case):
  mask, seg = FIELD_CASES[case]
  q_len, kv_len = (mask.shape if isinstance(mask, masks.Mask) else mask.shape[-2:])
  fields = attention.tokamax_mask(mask, q_len, kv_len, segment_ids=seg)
  got = expand_fields(fields, q_len, kv_len)
  want = np.asarray(attention._as_bool_array(mask, q_len, kv_len, seg))  # pylint: disable=protected-access
  has_key = want.any(axis=-1)  # [b or 1, 1, q]
  assert got.any(axis=-1).all(), "tokamax would be handed a row with no key"
  if fields.has_key is None:
    assert has_key.all()
  else:
    assert np.ndim(fields.has_key) == 3  # [b or 1, h or 1, q], as out's rows are zeroed
    np.testing.assert_array_equal(np.broadcast_to(fields.has_key, has_key.shape), has_key)
  rows = np.broadcast_to(has_key, np.broadcast_shapes(got.shape[:-1], has_key.shape))
  np.testing.assert_array_equal(np.broadcast_to(got, rows.shape + (kv_len,))[rows],
                                np.broadcast_to(want, rows.shape + (kv_len,))[rows])
  assert case in ("static_no_empty",) or not has_key.all(), "case meant to have empty rows"


def test_tokamax_on_cpu_is_a_clear_error():
  q = jnp.ones((1, 8, 2, 16), jnp.bfloat16)
  with pytest.raises(ValueError, match='impl="tokamax".*GPU.*cpu'):
    attention.attend(q, q, q, masks.causal(8), impl="tokamax")


def test_tokamax_needs_half_precision(monkeypatch):
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  q = jnp.ones((1, 8, 2, 16), jnp.float32)
  with pytest.raises(ValueError, match="bf16 or fp16.*float32"):
    attention.attend(q, q, q, masks.causal(8), impl="tokamax")


def test_missing_tokamax_says_how_to_install(monkeypatch):
  monkeypatch.setitem(sys.modules, "tokamax", None)  # import tokamax now raises ImportError
  q = jnp.ones((1, 8, 2, 16))
  with pytest.raises(ImportError, match=r"pip install -e \.\[gpu\]"):
    attention.tokamax_attention(q, q, q, masks.causal(8), implementation="xla")


def test_model_config_accepts_tokamax():
  cfg = transformer.default_model_config()
  cfg.attention_impl = "tokamax"
  transformer.validate_model_config(cfg)
  cfg.attention_impl = "flash"
  with pytest.raises(ValueError, match="model.attention_impl.*tokamax"):
    transformer.validate_model_config(cfg)


# --- Through tokamax itself (its XLA implementation stands in for Mosaic GPU on CPU). ---


@needs_tokamax
@pytest.mark.parametrize("mask", RANGE_MASKS + BOOL_MASKS, ids=mask_id)
def test_expander_agrees_with_tokamax(mask):
  from tokamax._src.ops.attention import base  # pylint: disable=import-outside-toplevel
  form = mask_ranges.to_ranges(mask)
  rows = lambda x: None if x is None else jnp.asarray(x)[None]
  causal = None if form.causal_offset is None else base.CausalMask(form.causal_offset,
                                                                    form.causal_window)
  tk = base.Mask(None if form.bool_mask is None else jnp.asarray(form.bool_mask),
                 causal_mask=causal, k_start=rows(form.k_start), k_end=rows(form.k_end))
  got = tk.as_array(mask.q_len, mask.kv_len)
  got = np.ones(mask.shape, bool) if got is None else np.asarray(got)
  np.testing.assert_array_equal(np.broadcast_to(got, (1,) + mask.shape)[0], expand(form))


def _qkv(q_len, kv_len, b=2, h=4, hkv=2, d=16, seed=0):
  keys = jax.random.split(jax.random.key(seed), 4)
  q = jax.random.normal(keys[0], (b, q_len, h, d), jnp.float32)
  k, v = (jax.random.normal(key, (b, kv_len, hkv, d), jnp.float32) for key in keys[1:3])
  return q, k, v, jax.random.normal(keys[3], (b, q_len, h, d), jnp.float32)


@needs_tokamax
@pytest.mark.parametrize("case", ["causal", "block_causal", "bd3", "empty_rows", "segments",
                                  "explicit_array"])
def test_tokamax_wrapper_matches_xla(case):
  """Forward and gradients (GQA, fp32) of the wrapper against attend(impl="xla"); empty rows
  give 0 and zero, finite gradients."""
  mask, seg = {"causal": (masks.causal(16), None),
               "block_causal": (masks.block_causal(12, 20, 4, q_offset=8), None),
               "bd3": (masks.bd3_training(8, 4), None),
               "empty_rows": FIELD_CASES["static"],
               "segments": FIELD_CASES["segments"],
               "explicit_array": (jnp.asarray(FIELD_CASES["explicit_array"][0]),
                                  FIELD_CASES["explicit_array"][1])}[case]
  q, k, v, dout = _qkv(*mask.shape[-2:])
  seg = None if seg is None else tuple(jnp.asarray(s) for s in seg)

  def run(fn):
    out, vjp = jax.vjp(lambda q, k, v: fn(q, k, v, mask, segment_ids=seg), q, k, v)
    return [np.asarray(x) for x in (out, *vjp(dout))]

  got = run(lambda *a, **kw: attention.tokamax_attention(*a, implementation="xla", **kw))
  want = run(attention.xla_attention)
  for g, w in zip(got, want):
    assert np.isfinite(g).all()
    np.testing.assert_allclose(g, w, atol=1e-5, rtol=1e-5)


# --- The benchmark's tokamax row (experiments/kernel_bench.py). ---


def test_bench_counts_the_tiles_tokamax_visits():
  """Counted independently on 128 x 128 tiles at n=2048, block 16: BD3 needs 288 tiles and
  tokamax visits 408 forward, 1024 backward; block-causal 136, 136 and 256."""
  assert kernel_bench.tokamax_tiles(masks.bd3_training(2048, 16), 128) == (288, 408, 1024)
  assert kernel_bench.tokamax_tiles(masks.block_causal(2048, 2048, 16), 128) == (136, 136, 256)
  assert kernel_bench.tokamax_tiles(masks.causal(2048), 128) == (136, 136, 136)


def test_bench_runs_tokamax_only_where_it_can(monkeypatch):
  assert "platform 'cpu'" in kernel_bench.tokamax_unavailable("cpu")
  monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
  assert "pip install -e .[gpu]" in kernel_bench.tokamax_unavailable("gpu")
  monkeypatch.setattr(importlib.util, "find_spec", lambda name: object())
  args = kernel_bench.parse_args(["--smoke"])
  mask, plan = kernel_bench.make_plan("bd3_16", 256, 1, 2, 64, 0.25)
  built = kernel_bench.kernels_for("gpu", mask, plan, args)["tokamax"]()
  assert built.func is attention.tokamax_attention and built.keywords == {"mask": mask}
  # A run-time top-k plan has no mask object to translate.
  assert "tokamax" not in kernel_bench.kernels_for("gpu", None, plan, args)


@pytest.fixture
def hopper_target(monkeypatch):
  """Make tokamax 0.0.17 lower its Mosaic GPU kernels for an sm90 GPU from this CPU host: it
  reads the compute capability and SM count from the default device, which here is a CPU."""
  import types  # pylint: disable=import-outside-toplevel
  from tokamax._src import gpu_utils  # pylint: disable=import-outside-toplevel
  from tokamax._src import mosaic_gpu as tk_mosaic_gpu  # pylint: disable=import-outside-toplevel
  monkeypatch.setattr(gpu_utils, "_compute_capability", lambda device=None: 9.0)
  monkeypatch.setattr(gpu_utils, "has_mosaic_gpu_support", lambda device=None: True)
  h100 = types.SimpleNamespace(core_count=132, platform="gpu", compute_capability="9.0")
  monkeypatch.setattr(tk_mosaic_gpu, "backend",
                      types.SimpleNamespace(get_default_device=lambda: h100))
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")


@needs_tokamax
@pytest.mark.parametrize("mask", [masks.causal(8192), masks.block_causal(8192, 8192, 16),
                                  masks.bd3_training(4096, 16)], ids=mask_id)
def test_tokamax_mosaic_gpu_lowers_for_cuda(mask, hopper_target):  # pylint: disable=unused-argument
  """The fields impl="tokamax" builds are accepted by tokamax's Hopper kernels, forward and
  backward, at T=8192, D=128, bf16, GQA (lowering only: not ptxas, numerics or speed)."""
  q = jax.ShapeDtypeStruct((1, 8192, 8, 128), jnp.bfloat16)
  kv = jax.ShapeDtypeStruct((1, 8192, 4, 128), jnp.bfloat16)
  loss = lambda q, k, v: jnp.sum(attention.attend(q, k, v, mask, impl="tokamax")
                                 .astype(jnp.float32))
  lowered = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).trace(q, kv, kv).lower(
      lowering_platforms=("cuda",))
  text = lowered.compiler_ir("stablehlo").operation.get_asm(large_elements_limit=16)
  calls = re.findall(r"stablehlo.custom_call @mosaic_gpu", text)
  assert len(calls) >= 2, calls  # the forward kernel and the backward kernel(s)
