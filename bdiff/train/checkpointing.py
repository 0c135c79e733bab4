"""Orbax checkpoints: train state + data position + config, restored strictly.

The data position is the step itself (the batch for step s is a pure function of (seed, s)),
so resuming needs no iterator state; it is still written so a checkpoint says where it is.
Restore goes through ``StandardRestore`` with the abstract, sharded target state: a missing or
extra parameter is an error, never silently ignored (a silently re-initialised weight would
train or sample on without complaint). Inference reads only the params (or EMA params)
subtree with :func:`restore_subtree`: the Adam moments (twice the params) are never read.

Both check what they restore: a checkpoint that cannot be read, or that holds NaN/Inf (flipped
bytes can restore without any storage error), is reported by step and skipped for the newest
intact one.
"""
from __future__ import annotations

import logging
import os

from etils import epath
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

log = logging.getLogger("bdiff")


def manager(workdir: str, *, max_to_keep: int = 3, create: bool = True
            ) -> ocp.CheckpointManager:
  """The run's checkpoint manager; readers pass ``create=False`` (nothing is written)."""
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=create,
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


class CorruptCheckpointError(ValueError):
  """A checkpoint that cannot be read, or whose arrays are not all finite."""


def restore(mgr: ocp.CheckpointManager, abstract_state, shardings, step: int | None = None):
  """Restore (state, meta) at ``step`` into the given shardings; by default the newest intact
  checkpoint.

  Without ``step``, a checkpoint that cannot be read or holds non-finite values is skipped
  with a warning naming it; once an older one restores, the bad one is moved to
  ``checkpoints_corrupt/`` (kept, and out of the way of the next save at that step). If none
  restores, the newest one's error is raised and nothing is moved.
  """
  steps = [step] if step is not None else sorted(mgr.all_steps(), reverse=True)
  if not steps:
    raise FileNotFoundError(f"no checkpoint in {mgr.directory}")
  target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        abstract_state, shardings)

  def load(s):
    where = f"checkpoint step {s} in {mgr.directory}"
    restored = _read(where, lambda: mgr.restore(s, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore())))
    _check_finite(restored["state"], where)
    return restored["state"], restored["meta"]

  bad, result = _newest_intact(steps, load)
  if bad and jax.process_index() == 0:
    _move_aside(mgr, bad)
  return result


def _newest_intact(steps, load):
  """(skipped steps, ``load(step)``) for the first of ``steps`` whose load raises no
  CorruptCheckpointError; if none loads, the first one's error."""
  bad, first_error = [], None
  for step in steps:
    try:
      return bad, load(step)
    except CorruptCheckpointError as e:
      first_error = first_error or e
      bad.append(step)
      log.warning("%s; trying the previous checkpoint", e)
  raise first_error


def _move_aside(mgr: ocp.CheckpointManager, steps) -> None:
  aside = os.path.join(os.path.dirname(str(mgr.directory)), "checkpoints_corrupt")
  os.makedirs(aside, exist_ok=True)
  for step in steps:
    dest = os.path.join(aside, str(step))
    while os.path.exists(dest):
      dest += "_"
    os.rename(os.path.join(str(mgr.directory), str(step)), dest)
    log.warning("moved the corrupt checkpoint step %d to %s", step, dest)
  mgr.reload()


def read_meta(workdir: str, step: int | None = None) -> dict:
  """The JSON metadata (config, step, data position) of a checkpoint, without the arrays."""
  mgr = manager(workdir, create=False)
  step = mgr.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f"no checkpoint under {workdir}/checkpoints")
  return mgr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]


def saved_items(workdir: str) -> set[str]:
  """The state entries (``params``, ``opt_state``, ...) of the newest checkpoint whose metadata
  reads (an unreadable one is left to the restore to report); empty if none reads. A
  converted checkpoint (``bdiff convert``) holds ``params`` alone."""
  mgr = manager(workdir, create=False)
  for step in sorted(mgr.all_steps(), reverse=True):
    item_dir = epath.Path(mgr.directory) / str(step) / "state"
    try:
      saved = ocp.PyTreeCheckpointHandler().metadata(item_dir).tree
    except Exception:  # pylint: disable=broad-except  (as _read: Orbax raises many types)
      continue
    return {name for name, value in saved.items() if value is not None}
  return set()


def _flat(tree) -> dict:
  return {jax.tree_util.keystr(path, simple=True, separator="/"): leaf
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def _check_same_tree(saved, abstract, where: str) -> None:
  """Raise ValueError unless `saved` (checkpoint metadata) has `abstract`'s keys and shapes."""
  saved, wanted = _flat(saved), _flat(abstract)
  missing, extra = sorted(set(wanted) - set(saved)), sorted(set(saved) - set(wanted))
  if missing or extra:
    raise ValueError(f"{where} does not match the model: missing {missing[:5]}, "
                     f"unexpected {extra[:5]} (is --config the one this run was trained with?)")
  for key, want in wanted.items():
    got = saved[key]
    if tuple(got.shape) != tuple(want.shape) or jax.numpy.dtype(got.dtype) != want.dtype:
      raise ValueError(f"{where} {key}: saved {got.dtype}{list(got.shape)}, the model "
                       f"needs {want.dtype}{list(want.shape)}")


def _check_finite(tree, where: str) -> None:
  """Raise ValueError naming the arrays of ``tree`` that hold NaN or Inf (flipped bytes in a
  checkpoint can restore without any error, as NaN weights)."""
  finite = jax.jit(lambda t: jax.tree.map(lambda x: jnp.isfinite(x).all(), t))(tree)
  bad = [key for key, ok in _flat(finite).items() if not bool(ok)]
  if bad:
    raise CorruptCheckpointError(f"{where}: non-finite values in {bad[:5]}")


def restore_subtree(workdir: str, name: str, abstract, shardings, step: int | None = None):
  """Restore only ``state.<name>`` (``"params"`` or ``"ema_params"``) at ``step`` (default:
  the newest intact checkpoint) into ``shardings``: what inference needs, the rest of the
  state is not read.

  Strict like :func:`restore`: the saved subtree must have exactly ``abstract``'s keys, shapes
  and dtypes. A checkpoint that cannot be read or holds non-finite values is skipped with a
  warning naming its step (only when ``step`` is not given; nothing is moved).
  """
  mgr = manager(workdir, create=False)
  steps = [step] if step is not None else sorted(mgr.all_steps(), reverse=True)
  if not steps:
    raise FileNotFoundError(f"no checkpoint under {workdir}/checkpoints")
  target = {name: jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)}
  restore_args = jax.tree.map(lambda t: ocp.ArrayRestoreArgs(sharding=t.sharding), target)

  def load(s):
    where = f"checkpoint step {s} under {workdir}/checkpoints"
    item_dir = epath.Path(mgr.directory) / str(s) / "state"
    saved = _read(where, lambda: ocp.PyTreeCheckpointHandler().metadata(item_dir).tree)
    if saved.get(name) is None:
      raise ValueError(f"{where} has no {name!r}")
    _check_same_tree(saved[name], abstract, f"{where}: {name}")
    restored = _read(where, lambda: ocp.PyTreeCheckpointer().restore(
        item_dir, args=ocp.args.PyTreeRestore(item=target, restore_args=restore_args,
                                              partial_restore=True)))[name]
    _check_finite(restored, f"{where}: {name}")
    return restored

  return _newest_intact(steps, load)[1]


def _read(where: str, read):
  """``read()``; any failure of the storage layers is one CorruptCheckpointError naming the
  step."""
  try:
    return read()
  except Exception as e:  # pylint: disable=broad-except  (Orbax/TensorStore raise many types)
    first = (str(e).splitlines() or [""])[0][:200]
    raise CorruptCheckpointError(f"{where} is unreadable ({type(e).__name__}: {first})"
                                 ) from e
