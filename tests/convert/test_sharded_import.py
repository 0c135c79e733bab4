"""Import onto 8 devices (fsdp 4 x tensor 2): the same arrays as on one device, and every
device (and every read) holds only its own slice of a tensor its sharding splits."""
import jax
import numpy as np
import pytest

from bdiff import convert, sharding
from bdiff.convert import safetensors_io
from bdiff.train import state as state_lib
from tests.convert.conftest import fixture_dir


def load(family: str, devices, data: int, fsdp: int, tensor: int, monkeypatch=None):
  cfg = convert.hf_config(fixture_dir(family))
  cfg.mesh.update(data=data, fsdp=fsdp, tensor=tensor)
  mesh = sharding.make_mesh(cfg.mesh, devices=devices)
  _, _, abstract, shardings = state_lib.build(cfg, mesh)
  params, _, _ = convert.load_params(fixture_dir(family), cfg.model, abstract.params,
                                     shardings.params, progress=False)
  return params


@pytest.mark.parametrize("family", ["llama", "qwen2", "llada"])
def test_sharded_import_equals_single_device(family, monkeypatch):
  reads = []
  real_read = safetensors_io.CheckpointReader.read

  def recording_read(self, name, slices):
    out = real_read(self, name, slices)
    reads.append((name, out.size, int(np.prod(self.header[name][0]))))
    return out

  monkeypatch.setattr(safetensors_io.CheckpointReader, "read", recording_read)
  sharded = load(family, jax.devices(), 1, 4, 2)
  monkeypatch.undo()
  single = load(family, jax.devices()[:1], 1, 1, 1)
  split = 0
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(sharded), jax.tree.leaves(single)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=str(path))
    shard_shape = a.sharding.shard_shape(a.shape)
    assert all(s.data.shape == shard_shape for s in a.addressable_shards), path
    split += shard_shape != a.shape
  assert split >= 10  # kernels, embeddings and norms are split over fsdp and tensor
  # Every parameter is split over fsdp or tensor here, so no read returns a whole tensor.
  assert reads and all(got <= total // 2 for _, got, total in reads), \
      max(reads, key=lambda r: r[1] / r[2])
