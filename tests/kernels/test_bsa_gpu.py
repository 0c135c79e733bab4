"""The Mosaic GPU kernels (gpu.py: forward, dQ, dK/dV) run on CPU by the Mosaic GPU
interpreter, against the pure-JAX reference and its autodiff, for every mask type, GQA,
lengths that are not tile multiples, segment ids, runtime top-k plans, empty rows, f16 and
bf16. Shapes are tiny: the interpreter simulates every warpgroup, barrier and TMA copy of
every CTA, and each kernel configuration costs a few seconds of compilation."""
from __future__ import annotations

import contextlib
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax._src.pallas.mosaic_gpu.interpret import interpret_pallas_call as gpu_interpret
from jax.experimental.pallas import mosaic_gpu as plgpu

from bdiff import attention, masks
from pallas_kernels.block_sparse_attention import gpu, reference
from pallas_kernels.block_sparse_attention import plan as plan_lib
from tests.kernels import bsa_common, mgpu_interpret_shim

# Fixed per-dtype tolerances against the f32 reference on the same (rounded) inputs; the
# kernel rounds P to the input dtype before the PV matmul, as FlashAttention does.
TOL = {jnp.bfloat16: dict(atol=2e-2, rtol=2e-2), jnp.float16: dict(atol=2e-3, rtol=2e-3)}
LSE_TOL = dict(atol=2e-5, rtol=2e-5)  # f32 statistics of the same f32 scores


@pytest.fixture(autouse=True)
def _reset_interpreter():
  """The interpreter keeps global state that an exception leaves inconsistent."""
  yield
  gpu_interpret.reset_gpu_interpret_mode_state()


def _heads_major(x):
  return x.transpose(0, 2, 1, 3)


def _assert_close(actual, expected, dtype, what):
  np.testing.assert_allclose(np.asarray(actual, np.float32), np.asarray(expected, np.float32),
                             err_msg=what, **TOL[dtype])


def check(plan, *, batch=1, heads=2, kv_heads=1, head_dim=64, dtype=jnp.float16,
          interpret=None, grads=False, **kwargs):
  """Runs the interpreted kernels and asserts they equal the reference (forward, and with
  ``grads`` the vjp of (out, lse) for random cotangents); returns the LSE."""
  key_in, key_out = jax.random.split(jax.random.key(0))
  q, k, v = bsa_common.qkv(key_in, batch, plan.q_len, plan.kv_len, heads, kv_heads,
                           head_dim, dtype)
  scale = head_dim ** -0.5
  interpret = interpret or plgpu.InterpretGPUParams()
  qkv = [_heads_major(x) for x in (q, k, v)]
  out, lse = gpu.forward(*qkv, plan, scale=scale, interpret=interpret, **kwargs)
  ref = lambda q, k, v: reference.attention(q, k, v, plan, scale=scale)
  (ref_out, ref_lse), vjp = jax.vjp(ref, q, k, v)
  _assert_close(_heads_major(out), ref_out, dtype, "out")
  lse, ref_lse = np.asarray(lse), np.asarray(ref_lse)
  np.testing.assert_array_equal(np.isfinite(lse), np.isfinite(ref_lse), err_msg="empty rows")
  finite = np.isfinite(ref_lse)
  np.testing.assert_allclose(lse[finite], ref_lse[finite], err_msg="lse", **LSE_TOL)
  if grads:
    k1, k2 = jax.random.split(key_out)
    dout = jax.random.normal(k1, q.shape, jnp.float32).astype(dtype)
    dlse = jnp.where(finite, jax.random.normal(k2, lse.shape), 0.0)
    grads = gpu.backward(*qkv, out, jnp.asarray(lse), _heads_major(dout), dlse, plan,
                         scale=scale, interpret=interpret, **kwargs)
    for name, got, want in zip(("dq", "dk", "dv"), grads, vjp((dout, dlse))):
      _assert_close(_heads_major(got), want, dtype, name)
  return lse


def test_attend_pallas_gpu_interpret_block_causal_offset_gqa_segments(monkeypatch):
  """The public path: attend(impl="pallas", backend="gpu_interpret") runs the Mosaic GPU
  kernels (forward and backward through the api's custom_vjp) and equals the reference
  backend, for 60 queries against a 64-token cache + themselves (no length a tile multiple;
  the default 128-row tiles give two compute warpgroups per CTA), 4 query heads on 2 KV
  heads, and random packed segment ids."""
  calls = []
  for name in ("forward", "backward"):
    real = getattr(gpu, name)
    monkeypatch.setattr(gpu, name, lambda *a, real=real, name=name, **kw: (
        calls.append(name), real(*a, **kw))[1])
  mask = masks.block_causal(60, 124, 8, q_offset=64)
  q, k, v = bsa_common.qkv(jax.random.key(2), 1, 60, 124, 4, 2, 64, jnp.bfloat16)
  dout = jax.random.normal(jax.random.key(3), q.shape).astype(jnp.bfloat16)
  rng = np.random.default_rng(0)
  segs = tuple(jnp.asarray(np.sort(rng.integers(0, 3, (1, n)), axis=1)) for n in (60, 124))

  def run(backend):
    f = lambda q, k, v: attention.attend(q, k, v, mask, impl="pallas", backend=backend,
                                         segment_ids=segs)
    out, vjp = jax.vjp(f, q, k, v)
    return out, vjp(dout)

  (out, grads), (ref_out, ref_grads) = run("gpu_interpret"), run("reference")
  assert set(calls) == {"forward", "backward"}  # shapes used by no other test: traced here
  _assert_close(out, ref_out, jnp.bfloat16, "out")
  for name, got, want in zip(("dq", "dk", "dv"), grads, ref_grads):
    _assert_close(got, want, jnp.bfloat16, name)


def test_attend_pallas_gpu_backends_reject_float32():
  q = jnp.zeros((1, 128, 2, 64), jnp.float32)
  with pytest.raises(ValueError, match="bfloat16 or float16"):
    attention.attend(q, q, q, masks.causal(128), impl="pallas", backend="gpu_interpret")


def test_bd3_two_stream_bf16_head_dim_128_gpu_variant_with_grads():
  """[x_t ; x_0], 160 tokens: diagonal tiles partial, the last key tile mostly padding;
  block_k = 128 gives the dK/dV kernel two compute warpgroups. Runs the exact GPU code path
  (P and dS fed to wgmma from registers, as FlashAttention-3 does), which the stock
  interpreter cannot run (see mgpu_interpret_shim); on jax versions the shim does not
  cover, the interpreter variant (P through shared memory) runs instead."""
  mask = masks.bd3_training(80, 16)
  registers = mgpu_interpret_shim.SUPPORTED
  with (mgpu_interpret_shim.register_a_wgmma() if registers else contextlib.nullcontext()):
    check(plan_lib.plan_for_mask(mask, block_q=128, block_k=128), head_dim=128,
          dtype=jnp.bfloat16, grads=True, p_in_smem=not registers)


def test_causal_and_window_three_stage_ring():
  mask = masks.causal(200) & masks.sliding_window(200, 200, left=70)
  check(plan_lib.plan_for_mask(mask, block_q=64, block_k=64), stages=3)


def test_empty_rows_give_zero_and_minus_inf_with_grads():
  # Rows q >= 45 see no key: some inside listed tiles, and a whole tile row that lists none.
  mask = masks.sliding_window(130, 40, left=5)
  plan = plan_lib.plan_for_mask(mask, block_q=64, block_k=64)
  assert int(np.asarray(plan.kv_count).min()) == 0
  lse = check(plan, heads=1, grads=True)
  assert np.isneginf(lse[..., 45:]).all() and np.isfinite(lse[..., :45]).all()


def test_runtime_top_k_per_batch_and_kv_head_plan_with_grads():
  mask = masks.causal(192)
  nq = nk = 3
  # One selection per batch row and KV head, shared by the KV head's two query heads.
  scores = jax.random.uniform(jax.random.key(1), (2, 2, nq, nk))
  plan = plan_lib.plan_from_scores(scores, mask, k=2, block_q=64, block_k=64,
                                   forced=plan_lib.diagonal_tiles(mask, 64, 64))
  assert plan.group_shape == (2, 2) and plan.dynamic
  check(plan, batch=2, heads=4, kv_heads=2, grads=True)


def test_full_flag_skips_the_predicate():
  # A plan whose diagonal tiles are flagged FULL means "attend the whole tile": the kernel
  # must not apply the causal predicate there (it is applied on partial tiles only).
  plan = plan_lib.plan_for_mask(masks.causal(128), block_q=64, block_k=64)
  full = np.ones_like(np.asarray(plan.kv_full))
  plan = dataclasses.replace(plan, kv_full=full)
  dense = np.asarray(reference.dense_mask(plan))[0, 0]
  assert dense[:64, :64].all() and not dense[:64, 64:].any()
  check(plan, heads=1)


def test_no_races_in_forward_and_backward():
  mask = masks.block_causal(128, 128, 16)
  check(plan_lib.plan_for_mask(mask, block_q=128, block_k=128), heads=1, grads=True,
        interpret=plgpu.InterpretGPUParams(detect_races=True))
  assert not gpu_interpret.get_races().races_found


@pytest.mark.parametrize("bad, message", [
    (dict(dtype=jnp.float32), "bfloat16 or float16"),
    (dict(head_dim=256), "head_dim"),
    (dict(block_q=32), "block_q"),
    (dict(block_k=96), "block_k"),
])
def test_unsupported_inputs_raise(bad, message):
  args = dict(dtype=jnp.float16, head_dim=64, block_q=64, block_k=64) | bad
  plan = plan_lib.plan_for_mask(masks.causal(128), block_q=args["block_q"],
                                block_k=args["block_k"])
  q = jnp.zeros((1, 1, 128, args["head_dim"]), args["dtype"])
  with pytest.raises(ValueError, match=message):
    gpu.forward(q, q, q, plan, scale=1.0, interpret=plgpu.InterpretGPUParams())
