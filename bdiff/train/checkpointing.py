"""Orbax checkpoints: train state + data position + config, restored strictly.

The data position is the step itself (the batch for step s is a pure function of (seed, s)),
so resuming needs no iterator state; it is still written so a checkpoint says where it is.
Restore goes through ``StandardRestore`` with the abstract, sharded target state: a missing or
extra parameter is an error, never silently ignored (block_diffusion.md §13, R6).
"""
from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp


def manager(workdir: str, *, max_to_keep: int = 3) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                         enable_async_checkpointing=False)
  return ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, "checkpoints")),
                               options=options)


def save(mgr: ocp.CheckpointManager, step: int, state, *, config_dict: dict,
         data_position: dict) -> None:
  mgr.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      meta=ocp.args.JsonSave({"step": int(step), "data": data_position,
                              "config": config_dict})))
  mgr.wait_until_finished()


def restore(mgr: ocp.CheckpointManager, abstract_state, shardings, step: int | None = None):
  """Restore (state, meta) at ``step`` (default latest) into the given shardings."""
  step = mgr.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f"no checkpoint in {mgr.directory}")
  target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        abstract_state, shardings)
  restored = mgr.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
  return restored["state"], restored["meta"]


def read_meta(workdir: str, step: int | None = None) -> dict:
  """The JSON metadata (config, step, data position) of a checkpoint, without the arrays."""
  mgr = manager(workdir)
  step = mgr.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f"no checkpoint under {workdir}/checkpoints")
  return mgr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
