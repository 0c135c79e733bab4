"""Multi-host start-up through JAX's own runtime (``jax.distributed``); no home-made layer.

``bdiff train``, ``sample``, ``eval`` and ``export`` call :func:`initialize` before JAX touches a
device:

* explicit: ``--coordinator_address=HOST:PORT --num_processes=N --process_id=I`` on every
  host (what a hand-made cluster, or the localhost test, uses);
* auto: on a TPU pod slice, under SLURM with more than one task, or under Open MPI with more
  than one rank, ``jax.distributed.initialize()`` detects the cluster itself;
* otherwise a single process, nothing to do.

After it, ``jax.devices()`` lists the devices of every host; meshes span them all, each host
feeds its own rows (``jax.make_array_from_process_local_data``, or :func:`global_array` when
every host holds the whole input, as sampling's prompts) and reads only its own shards of
checkpoints (Orbax does this for sharded restores). :func:`host_array` brings a result back
whole; process 0 alone writes what the run shares (:func:`is_main_process`).
"""
from __future__ import annotations

import dataclasses
import logging
import os

import jax
from jax.experimental import multihost_utils
import numpy as np

log = logging.getLogger("bdiff")

# Environment variables whose presence means "a multi-process cluster that JAX detects itself"
# (jax._src.clusters: SLURM, Open MPI, Cloud TPU pods), each with the variable holding the
# process count where there is one.
_CLUSTERS = (
    ("SLURM", "SLURM_JOB_ID", "SLURM_NTASKS"),
    ("Open MPI", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_SIZE"),
    ("TPU pod", "TPU_WORKER_HOSTNAMES", None),
)


@dataclasses.dataclass(frozen=True)
class DistributedArgs:
  """What the user asked for; all None = auto-detect."""
  coordinator_address: str | None = None
  num_processes: int | None = None
  process_id: int | None = None

  def explicit(self) -> bool:
    given = {k: v for k, v in dataclasses.asdict(self).items() if v is not None}
    if given and len(given) != 3:
      missing = sorted(k for k in dataclasses.asdict(self) if k not in given)
      raise ValueError(f"multi-host start needs --coordinator_address, --num_processes and "
                       f"--process_id together; missing {', '.join('--' + m for m in missing)}")
    if given:
      if self.num_processes < 1:
        raise ValueError(f"--num_processes must be >= 1, got {self.num_processes}")
      if not 0 <= self.process_id < self.num_processes:
        raise ValueError(f"--process_id must be in [0, {self.num_processes}), "
                         f"got {self.process_id}")
      if ":" not in self.coordinator_address:
        raise ValueError(f"--coordinator_address must be HOST:PORT, got "
                         f"{self.coordinator_address!r}")
    return bool(given)


def detect_cluster(environ=None) -> str | None:
  """The name of the multi-process cluster JAX would auto-detect here, or None."""
  env = os.environ if environ is None else environ
  for name, present, count in _CLUSTERS:
    if present not in env:
      continue
    if name == "TPU pod":
      if "," in env[present]:  # one hostname = a single-host slice
        return name
    elif int(env.get(count, "1") or 1) > 1:
      return name
  return None


def initialize(args: DistributedArgs = DistributedArgs(), environ=None) -> dict:
  """Start JAX's multi-process runtime when asked for or detected; returns what was done.

  Must run before the first JAX computation or device query of the process.
  """
  if jax.distributed.is_initialized():
    return _summary("already initialised")
  if args.explicit():
    jax.distributed.initialize(args.coordinator_address, args.num_processes, args.process_id)
    return _summary("explicit")
  cluster = detect_cluster(environ)
  if cluster is not None:
    jax.distributed.initialize()
    return _summary(f"auto ({cluster})")
  return {"mode": "single process", "process_index": 0, "process_count": 1}


def _summary(mode: str) -> dict:
  info = {"mode": mode, "process_index": jax.process_index(),
          "process_count": jax.process_count(), "local_devices": jax.local_device_count(),
          "global_devices": jax.device_count()}
  log.info("multi-host: %s", info)
  return info


def is_main_process() -> bool:
  """Process 0 writes the run's shared files (metrics, run info); every process computes."""
  return jax.process_index() == 0


def global_array(value: np.ndarray, sharding) -> jax.Array:
  """``value`` (the same on every process) as one array over ``sharding``'s devices, each
  process placing only the slices its own devices hold."""
  return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])


def host_array(value) -> np.ndarray:
  """The whole of ``value`` as numpy on this process: gathered from the other processes when
  some of it lives only there (a collective: every process must call it, in the same order)."""
  if value.is_fully_addressable or value.is_fully_replicated:
    return np.asarray(value)
  return np.asarray(multihost_utils.process_allgather(value, tiled=True))
