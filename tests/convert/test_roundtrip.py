"""Import -> export -> import is bit-exact, and the exported directory is the family's format."""
import os

import jax
import numpy as np
import pytest

from bdiff import convert, runs
from tests.convert.conftest import (FAMILIES, assert_same_tensors, export_with_configs,
                                   fixture_dir)


@pytest.mark.parametrize("family", FAMILIES)
def test_export_gives_back_the_checkpoint_bits(converted, family, tmp_path):
  """Every tensor of the export equals the original's, bit for bit; tied heads stay tied."""
  out = str(tmp_path / "export")
  summary = convert.export_to_hf(converted(family), out)
  assert_same_tensors(fixture_dir(family), out)
  assert summary["family"] == family
  assert {"tokenizer.json", "tokenizer_config.json"} <= set(os.listdir(out))


@pytest.mark.parametrize("family", FAMILIES)
def test_exported_config_describes_the_same_model(converted, family, tmp_path):
  """config.json of the export: the family's architecture and the same bdiff model section."""
  hf, original = export_with_configs(converted(family), family, str(tmp_path / "export"))
  assert hf["model_type"] == original["model_type"]
  assert hf["architectures"] == original["architectures"]
  assert hf["eos_token_id"] == original["eos_token_id"]  # the checkpoint's other keys kept
  assert (convert.model_config_from_hf(hf).to_dict()
          == convert.model_config_from_hf(original).to_dict())


def test_import_export_import_params_equal(converted, tmp_path):
  """The re-imported run's params equal the first import's exactly (Qwen2: biases, padding)."""
  out, again = str(tmp_path / "export"), str(tmp_path / "again")
  convert.export_to_hf(converted("qwen2"), out)
  convert.convert_from_hf(out, again, progress=False)
  _, first, _ = runs.restore_params(converted("qwen2"))
  _, second, _ = runs.restore_params(again)
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(first), jax.tree.leaves(second)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=str(path))
