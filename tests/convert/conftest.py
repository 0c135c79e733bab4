"""Fixture checkpoints (tests/fixtures/hf/, written by scripts/make_hf_fixtures.py) and their
converted runs, made once per test module."""
import json
import os
import shutil

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file

from bdiff import convert

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "fixtures", "hf")
FAMILIES = ("llama", "qwen2", "qwen3")  # AR families; "sdar" has its own tests


def fixture_dir(family: str) -> str:
  return os.path.join(FIXTURES, family)


def golden(family: str) -> dict:
  with np.load(os.path.join(fixture_dir(family), "golden.npz")) as g:
    return {k: g[k] for k in g.files}


def hf_tensors_on_disk(hf_dir: str) -> dict:
  """Every tensor of a HF directory's safetensors files, by name."""
  out = {}
  for name in sorted(os.listdir(hf_dir)):
    if name.endswith(".safetensors"):
      out.update(load_file(os.path.join(hf_dir, name)))
  return out


def export_with_configs(workdir: str, family: str, out: str) -> tuple[dict, dict]:
  """Export ``workdir`` to ``out``; return (exported config.json, the fixture's config.json)."""
  convert.export_to_hf(workdir, out)
  configs = []
  for d in (out, fixture_dir(family)):
    with open(os.path.join(d, "config.json"), encoding="utf-8") as f:
      configs.append(json.load(f))
  return configs[0], configs[1]


def assert_same_tensors(original_dir: str, exported_dir: str) -> None:
  """The same tensor names, dtypes and bits (not merely close values)."""
  original, exported = hf_tensors_on_disk(original_dir), hf_tensors_on_disk(exported_dir)
  assert sorted(exported) == sorted(original)
  for name, value in original.items():
    assert exported[name].dtype == value.dtype, name
    bits = np.uint16 if value.itemsize == 2 else np.uint32
    np.testing.assert_array_equal(exported[name].view(bits), value.view(bits), err_msg=name)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
  """family -> run directory converted with the default config (each family at most once)."""
  runs = {}

  def get(family: str) -> str:
    if family not in runs:
      workdir = str(tmp_path_factory.mktemp(f"run_{family}"))
      convert.convert_from_hf(fixture_dir(family), workdir, progress=False)
      runs[family] = workdir
    return runs[family]

  return get


def unallocatable_copy(family: str, tmp_path, monkeypatch) -> str:
  """A writable copy of a fixture checkpoint; allocating any parameter fails the test (errors
  must come before anything is allocated)."""
  hf_dir = str(tmp_path / "hf")
  shutil.copytree(fixture_dir(family), hf_dir)

  def no_allocation(*args, **kwargs):
    raise AssertionError("a parameter was allocated before the checkpoint was checked")

  monkeypatch.setattr(jax, "make_array_from_callback", no_allocation)
  return hf_dir
