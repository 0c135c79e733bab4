"""Entry points: attend(impl="pallas"), backend choice, input validation, compile-once."""
import logging

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bdiff import attention, masks
from pallas_kernels.block_sparse_attention import api
from pallas_kernels.block_sparse_attention import plan as plan_lib

from experiments import kernel_bench as bench
from bsa_common import MASKS, assert_close, qkv


@pytest.mark.parametrize("name", ["bd3", "causal_offset"])
def test_attend_pallas_kernel_equals_xla(name):
  """attend(impl="pallas") through the TPU kernel itself (interpret mode), not the reference:
  outputs and gradients equal the dense XLA attention."""
  mask = MASKS[name]
  q, k, v = qkv(jax.random.key(0), 1, mask.q_len, mask.kv_len, 2, 1, 32)
  dout = jax.random.normal(jax.random.key(1), q.shape)

  def run(impl, **kwargs):
    f = lambda q, k, v: attention.attend(q, k, v, mask, impl=impl, **kwargs)  # noqa: E731
    with jax.default_matmul_precision("highest"):
      out, vjp = jax.vjp(f, q, k, v)
      return out, vjp(dout)

  out, grads = run("pallas", backend="tpu_interpret")
  out_x, grads_x = run("xla")
  assert out.shape == q.shape and out.dtype == q.dtype
  assert_close(out, out_x, jnp.float32, "out")
  for g, g_x, what in zip(grads, grads_x, "qkv"):
    assert_close(g, g_x, jnp.float32, "d" + what)


def test_attend_pallas_runs_the_backend_it_names(monkeypatch):
  """backend="tpu_interpret" reaches the kernel (and "reference" does not)."""
  jax.clear_caches()  # the kernel is called while tracing: no cached trace may skip it
  calls = []
  real = api.tpu.forward
  monkeypatch.setattr(api.tpu, "forward", lambda *a, **k: calls.append(1) or real(*a, **k))
  mask = MASKS["bd3"]
  q, k, v = qkv(jax.random.key(0), 1, mask.q_len, mask.kv_len, 2, 1, 32)
  attention.attend(q, k, v, mask, impl="pallas", backend="reference")
  assert not calls
  attention.attend(q, k, v, mask, impl="pallas", backend="tpu_interpret")
  assert calls


def test_default_backend_is_reference_on_cpu_and_logs_once_on_gpu(monkeypatch, caplog):
  assert api._default_backend() == "reference"  # pylint: disable=protected-access
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  api._warn_no_gpu_kernel.cache_clear()  # pylint: disable=protected-access
  with caplog.at_level(logging.WARNING):
    assert api._default_backend() == "reference"  # pylint: disable=protected-access
    assert api._default_backend() == "reference"  # pylint: disable=protected-access
  assert sum("no Mosaic GPU kernel" in r.message for r in caplog.records) == 1


def test_backend_none_on_cpu_runs_and_matches_interpreted_kernel():
  mask = MASKS["sliding_window"]
  plan = api.plan_for_mask(mask, block_q=32, block_k=32)
  q, k, v = qkv(jax.random.key(1), 1, mask.q_len, mask.kv_len, 2, 1, 32)
  out = api.block_sparse_attention(q, k, v, plan)
  out_k = api.block_sparse_attention(q, k, v, plan, backend="tpu_interpret")
  assert_close(out_k, out, jnp.float32, "out")


def _inputs(mask, h=4, hkv=2, d=32, dtype=jnp.float32):
  return qkv(jax.random.key(2), 2, mask.q_len, mask.kv_len, h, hkv, d, dtype)


def test_validation_errors_are_precise():
  mask = masks.causal(40)
  plan = api.plan_for_mask(mask, block_q=16, block_k=16)
  q, k, v = _inputs(mask)
  bsa = api.block_sparse_attention
  with pytest.raises(ValueError, match="backend must be one of"):
    bsa(q, k, v, plan, backend="cuda")
  with pytest.raises(TypeError, match="plan must be a SparsityPlan"):
    bsa(q, k, v, mask)
  with pytest.raises(ValueError, match=r"expected q \[batch, q_len, heads, head_dim\]"):
    bsa(q[0], k, v, plan)
  with pytest.raises(ValueError, match="k and v must have the same shape"):
    bsa(q, k, v[:, :, :1], plan)
  with pytest.raises(ValueError, match="head_dim differs"):
    bsa(q, k[..., :16], v[..., :16], plan)
  with pytest.raises(ValueError, match="heads=4 must be a multiple of kv_heads=3"):
    q3, k3, v3 = _inputs(mask, h=4, hkv=3)
    bsa(q3, k3, v3, plan)
  with pytest.raises(ValueError, match="dtypes differ"):
    bsa(q.astype(jnp.bfloat16), k, v, plan)
  with pytest.raises(ValueError, match="not supported"):
    bsa(q.astype(jnp.int32), k.astype(jnp.int32), v.astype(jnp.int32), plan)
  with pytest.raises(ValueError, match=r"plan is for \(q_len, kv_len\)=\(40, 40\)"):
    bsa(q[:, :39], k, v, plan)
  with pytest.raises(TypeError, match="block_sizes must be a BlockSizes"):
    bsa(q, k, v, plan, block_sizes=(16, 16))
  with pytest.raises(ValueError, match="BlockSizes.block_q must be"):
    api.BlockSizes(block_q=0)
  with pytest.raises(ValueError, match=r"TPU tiles \(block_q, block_k\) must be multiples of 8"):
    bsa(q, k, v, api.plan_for_mask(mask, block_q=12, block_k=16), backend="tpu")


def test_plan_group_dims_are_checked_and_dynamic_tiles_are_fixed():
  mask = masks.full(32, 32)
  q, k, v = _inputs(mask)
  sel = jnp.ones((3, 1, 2, 2), bool)
  plan = plan_lib.plan_from_selection(sel, mask, block_q=16, block_k=16, capacity=2)
  with pytest.raises(ValueError, match="plan batch dim 3 must be 1 or batch=2"):
    api.block_sparse_attention(q, k, v, plan)
  plan = plan_lib.plan_from_selection(jnp.ones((1, 3, 2, 2), bool), mask, block_q=16,
                                      block_k=16, capacity=2)
  with pytest.raises(ValueError, match="plan head dim 3 must be 1, kv_heads=2 or heads=4"):
    api.block_sparse_attention(q, k, v, plan)
  with pytest.raises(ValueError, match="differ from the tiles"):
    api.block_sparse_attention(q, k, v, plan, block_sizes=api.BlockSizes(block_q=32))


def test_dynamic_topk_attention_compiles_once_per_selection_size():
  mask = masks.bd3_training(32, 8)
  bq = bk = 16
  kind = plan_lib.tile_kinds(mask, bq, bk)
  q, k, v = _inputs(mask)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(scores, q, k, v):
    plan = plan_lib.plan_from_scores(scores, mask, k=2, block_q=bq, block_k=bk)
    return jax.grad(lambda q: jnp.sum(api.block_sparse_attention(
        q, k, v, plan, backend="tpu_interpret") ** 2))(q)

  for seed in range(3):
    scores = jax.random.uniform(jax.random.key(seed), (2, 4) + kind.shape)
    assert np.all(np.isfinite(step(scores, q, k, v)))


def test_kernel_bench_smoke_writes_a_markdown_table(tmp_path):
  args = bench.parse_args(["--smoke", "--out", str(tmp_path / "bench.md")])
  args.masks, args.modes = ["bd3_16", "topk"], ["fwd"]
  rows = bench.run(args)
  assert {(r["mask"], r["kernel"]) for r in rows} == {
      ("bd3_16", "bdiff"), ("bd3_16", "xla"), ("topk", "bdiff"), ("topk", "xla")}
  assert all(r["useful"] > 0 and 0 < r["density"] < 1 for r in rows)
  text = bench.markdown(rows, args)
  assert "| bd3_16 | 256 | fwd | bdiff |" in text and "device: cpu" in text
