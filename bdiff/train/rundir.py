"""A run directory has one owner at a time, and one config per run (changes are recorded).

* **Lock.** Training holds an exclusive ``fcntl.flock`` on ``WORKDIR/.lock`` from before it
  reads the run until it returns or raises; a second training in the same directory is
  refused, naming the holder (pid, host, start time, written into the lock file). The kernel
  drops the lock when its process dies, so a killed run leaves no stale lock. The file itself
  is kept (deleting it would let a waiting process and a new one lock two different files).
  In a multi-host run only process 0 locks; the others learn its answer.
* **Config changes.** Resuming a run (a checkpoint past step 0) with a config that differs
  from the saved ``config.json`` is refused with the changed keys, unless every change is in
  :data:`HARMLESS` or the caller allows changes (``bdiff train --allow_config_change``). Each
  accepted change is appended to ``WORKDIR/history.jsonl``.
"""
from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import socket
from typing import Callable, Iterator

import jax
from jax.experimental import multihost_utils
import numpy as np

from bdiff import config as config_lib
from bdiff import distributed

LOCK_FILE = ".lock"
HISTORY_FILE = "history.jsonl"

# Keys (dotted; a trailing "." covers a whole section) a resumed run may change without the
# flag: they extend the run, change what is logged, evaluated, checkpointed or sampled, or
# where the arrays live (the mesh), never what a training step computes.
HARMLESS = ("name", "train.steps", "train.progress", "train.log_every", "train.eval_every",
            "train.eval_batches", "train.checkpoint_every", "train.keep_checkpoints",
            "mesh.", "eval.", "sample.")


class RunDirError(RuntimeError):
  """The run directory cannot be used now (bad input of a kind, not a bug)."""


class WorkdirLockedError(RunDirError):
  """Another training holds the run directory's lock."""


class ConfigChangedError(ValueError):
  """A resumed run's config differs from the saved one in keys that change the training."""


def _now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def on_main_process(fn: Callable):
  """``fn()`` on process 0 only; every process raises if it raised.

  Without this, a refusal on process 0 would leave the other processes waiting forever in
  their first collective. Returns ``fn()``'s result on process 0, None elsewhere.
  """
  error, result = None, None
  if distributed.is_main_process():
    try:
      result = fn()
    except Exception as e:  # pylint: disable=broad-except  (re-raised below, after agreeing)
      error = e
  if jax.process_count() > 1:
    ok = multihost_utils.broadcast_one_to_all(np.int32(error is None))
    if not int(ok) and error is None:
      raise RunDirError("process 0 refused to start this run (its error says why)")
  if error is not None:
    raise error
  return result


def _holder(path: str) -> str:
  try:
    with open(path, encoding="utf-8") as f:
      info = json.loads(f.read() or "{}")
  except (OSError, ValueError):
    info = {}
  if not info:
    return "another process (it has not recorded itself yet)"
  return f"pid {info.get('pid')} on host {info.get('host')}, started {info.get('started')}"


def _acquire(workdir: str) -> int:
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, LOCK_FILE)
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    os.close(fd)
    raise WorkdirLockedError(
        f"{workdir} is in use by another training ({_holder(path)}); wait for it to end or "
        f"use another --workdir") from None
  os.ftruncate(fd, 0)
  os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                            "started": _now()}).encode(), 0)
  return fd


def _release(fd: int) -> None:
  os.ftruncate(fd, 0)  # no holder recorded while nobody holds it
  fcntl.flock(fd, fcntl.LOCK_UN)
  os.close(fd)


@contextlib.contextmanager
def locked(workdir: str) -> Iterator[None]:
  """Hold ``WORKDIR/.lock`` (created with the directory) for the block; process 0 only."""
  fd = on_main_process(lambda: _acquire(workdir))
  try:
    yield
  finally:
    if fd is not None:
      _release(fd)


def _flatten(d: dict, prefix: str = "") -> dict:
  out = {}
  for key, value in d.items():
    if isinstance(value, dict):
      out.update(_flatten(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def config_changes(saved: dict, new: dict) -> dict:
  """{dotted key: (old, new)} for every key whose value differs (keys added to bdiff since
  the run was saved take their defaults on both sides)."""
  old = _flatten(config_lib.to_dict(config_lib.from_dict(saved)))
  now = _flatten(new)
  return {k: (old.get(k), now.get(k)) for k in sorted(set(old) | set(now))
          if old.get(k) != now.get(k)}


def harmless(key: str) -> bool:
  return any(key == h or (h.endswith(".") and key.startswith(h)) for h in HARMLESS)


def _describe(changes: dict) -> str:
  return ", ".join(f"{k}: {json.dumps(a)} -> {json.dumps(b)}" for k, (a, b) in changes.items())


def check_config(workdir: str, new: dict, resume_step: int | None,
                 allow_changes: bool) -> dict:
  """The changes from the saved ``config.json`` a resume would make; raises
  ConfigChangedError for changes outside :data:`HARMLESS` unless ``allow_changes``.

  Only a resume (a checkpoint past step 0) is checked: a fresh run, or the first training of
  imported weights (``bdiff convert`` saves them at step 0), sets the config.
  """
  path = os.path.join(workdir, "config.json")
  if not resume_step or not os.path.isfile(path):
    return {}
  with open(path, encoding="utf-8") as f:
    try:
      changes = config_changes(json.load(f), new)
    except ValueError as e:
      raise ValueError(f"{path}: {e}") from e
  guarded = {k: v for k, v in changes.items() if not harmless(k)}
  if guarded and not allow_changes:
    raise ConfigChangedError(
        f"{workdir} holds a run at step {resume_step} trained with another config; changed: "
        f"{_describe(guarded)}. Pass --allow_config_change (train(..., "
        f"allow_config_change=True)) to resume with these changes, or use a new --workdir")
  return changes


def record_changes(workdir: str, step: int, changes: dict) -> None:
  """Append accepted config changes to ``WORKDIR/history.jsonl`` (process 0 only)."""
  if not changes or not distributed.is_main_process():
    return
  row = {"time": _now(), "step": int(step), "event": "config_change",
         "changes": {k: [a, b] for k, (a, b) in changes.items()},
         "needed_flag": sorted(k for k in changes if not harmless(k))}
  with open(os.path.join(workdir, HISTORY_FILE), "a", encoding="utf-8") as f:
    f.write(json.dumps(row) + "\n")
