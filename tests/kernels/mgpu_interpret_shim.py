"""Test-only shim: a wgmma whose A operand is a register array, in the Mosaic GPU interpreter.

Why: on Hopper, FlashAttention-3 feeds P (and dS) to wgmma from registers (an "RS" wgmma),
and so does gpu.py by default. The GPU interpreter of jax 0.11.x
(``jax._src.pallas.mosaic_gpu.interpret``) reads wgmma's A operand only from a shared-memory
allocation (``gpu_callbacks.wgmma`` looks it up by allocation key), so the kernels' GPU
variant cannot run there; the ``gpu_interpret`` backend stages A through shared memory
instead (``p_in_smem``). This shim teaches the interpreter the register case, A given by
value, B and the accumulator as usual, so a test can also run the exact GPU variant on CPU.

Scope: patched only inside :func:`register_a_wgmma` (a context manager), and only for the
jax versions whose interpreter internals it was written against (``SUPPORTED``); other
versions skip the tests that need it. Not used by any library code.
"""
from __future__ import annotations

import contextlib
import functools

import jax
import numpy as np
from jax._src import callback
from jax._src.pallas.mosaic_gpu.interpret import gpu_callbacks
from jax._src.pallas.mosaic_gpu.interpret import jaxpr_interpret
from jax._src.pallas.mosaic_gpu.interpret import shared_memory as memory
from jax._src.state import types as state_types

SUPPORTED = jax.__version__.startswith("0.11.")


@gpu_callbacks.fail_on_exception
def _wgmma_register_a(*, token, mesh_location, thread, acc_allocation_key_as_array,
                      acc_transforms, a, b_allocation_key_as_array, b_transforms,
                      source_info=None):
  """``acc += a @ b`` with ``a`` a value: ``gpu_callbacks.wgmma`` minus the A lookup."""
  shared = gpu_callbacks._get_shared_memory()  # pylint: disable=protected-access
  info = memory.GPULoggingInfo(mesh_location, thread, source_info)
  keys, transforms = {}, {}
  for name, key, tr in (("acc", acc_allocation_key_as_array, acc_transforms),
                        ("b", b_allocation_key_as_array, b_transforms)):
    keys[name] = gpu_callbacks.HostAllocationKey.from_array(key)
    tr = gpu_callbacks._remove_noop_transforms(tr)  # pylint: disable=protected-access
    transforms[name] = jax.tree.map(int, tr)
  b_value, _, _ = shared.get_buffer_content(
      keys["b"], shared.access(keys["b"], transforms["b"]), thread, logging_info=info)
  acc_range = shared.access(keys["acc"], transforms["acc"])
  acc, _, _ = shared.get_buffer_content(keys["acc"], acc_range, thread, logging_info=info)
  result = acc + np.matmul(np.asarray(a), b_value, dtype=acc.dtype)
  shared.store_buffer_content(keys["acc"], acc_range, result, thread, logging_info=info)
  return token


def _interpret_wgmma(self, original, eqn, token, get_invals):
  if isinstance(eqn.invars[1].aval, state_types.AbstractRef):
    return original(self, eqn, token, get_invals)
  acc, a, b, *leaves = get_invals()
  trees = [eqn.params[f"{n}_transforms_tree"] or jax.tree.structure([])
           for n in ("acc", "a", "b")]
  acc_tr, _, b_tr = jax.tree.unflatten(jax.tree_util.treedef_tuple(trees), leaves)
  acc, acc_tr = jaxpr_interpret.resolve_ref(eqn.invars[0].aval, acc, acc_tr)
  b, b_tr = jaxpr_interpret.resolve_ref(eqn.invars[2].aval, b, b_tr)
  return callback.io_callback(
      functools.partial(_wgmma_register_a, source_info=eqn.source_info),
      gpu_callbacks.TOKEN_SHAPE_DTYPE, token=token, mesh_location=self.mesh_location,
      thread=self.thread, acc_allocation_key_as_array=acc, acc_transforms=acc_tr, a=a,
      b_allocation_key_as_array=b, b_transforms=b_tr), []


@contextlib.contextmanager
def register_a_wgmma():
  """Within the context, the interpreter accepts wgmma A operands held in registers."""
  cls = jaxpr_interpret.JaxprInterpreter
  original = cls._interpret_wgmma_ref_p  # pylint: disable=protected-access
  cls._interpret_wgmma_ref_p = functools.partialmethod(_interpret_wgmma, original)
  try:
    yield
  finally:
    cls._interpret_wgmma_ref_p = original
