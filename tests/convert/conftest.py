"""Fixture checkpoints (tests/fixtures/hf/, written by scripts/make_hf_fixtures.py) and their
converted runs, made once per test module."""
import os

import numpy as np
import pytest

from bdiff import convert

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "fixtures", "hf")
FAMILIES = ("llama", "qwen2", "qwen3")  # AR families; "sdar" has its own tests


def fixture_dir(family: str) -> str:
  return os.path.join(FIXTURES, family)


def golden(family: str) -> dict:
  with np.load(os.path.join(fixture_dir(family), "golden.npz")) as g:
    return {k: g[k] for k in g.files}


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
