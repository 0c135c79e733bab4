"""Device mesh and logical-axis sharding, in the style of MaxText and big_vision.

The mesh has axes ``("data", "fsdp", "tensor")``; parameters carry logical axis names and the
rule table in ``config.mesh.rules`` maps them onto mesh axes. ``jax.jit`` with in/out shardings
does the rest (no pjit, no pmap, no ``with mesh:``).
"""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

DEFAULT_RULES = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("layers", None),
)


def mesh_shape(mesh_cfg, num_devices: int | None = None) -> tuple[int, int, int]:
  """Resolve the (data, fsdp, tensor) sizes; one size may be -1 (fill the devices)."""
  n = jax.device_count() if num_devices is None else num_devices
  sizes = [int(mesh_cfg[a]) for a in MESH_AXES]
  for axis, size in zip(MESH_AXES, sizes):
    if size == 0 or size < -1:
      raise ValueError(f"mesh.{axis} must be a positive size or -1, got {size}")
  if sizes.count(-1) > 1:
    raise ValueError("at most one of mesh.data, mesh.fsdp, mesh.tensor may be -1")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if n % known:
      raise ValueError(f"{n} devices are not divisible by the fixed mesh axes ({known})")
    sizes[sizes.index(-1)] = n // known
  if math.prod(sizes) != n:
    raise ValueError(f"mesh (data, fsdp, tensor)={tuple(sizes)} needs {math.prod(sizes)} "
                     f"devices, {n} available")
  return tuple(sizes)


def make_mesh(mesh_cfg, devices=None) -> jax.sharding.Mesh:
  """The training/inference mesh from the ``mesh`` config section."""
  devices = jax.devices() if devices is None else devices
  shape = mesh_shape(mesh_cfg, len(devices))
  axis_types = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
  return jax.make_mesh(shape, MESH_AXES, axis_types=axis_types, devices=devices)


def rules(mesh_cfg) -> tuple:
  """The logical-axis rule table as a tuple of (logical_name, mesh_axes) pairs."""
  return tuple((name, tuple(ax) if isinstance(ax, list) else ax)
               for name, ax in mesh_cfg.rules)


def logical_shardings(boxed_tree, mesh, mesh_cfg):
  """NamedShardings for a tree whose leaves may be ``nn.LogicallyPartitioned`` boxes."""
  specs = nn.get_partition_spec(boxed_tree)
  return nn.logical_to_mesh_sharding(specs, mesh, rules(mesh_cfg))


def batch_sharding(mesh) -> NamedSharding:
  """Batch rows split over data x fsdp; sequence replicated."""
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def global_batch(local: dict, mesh) -> dict:
  """Assemble this host's rows into global arrays sharded over the batch axes."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in local.items()}
