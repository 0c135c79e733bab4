"""experiments/adapt_ar.py: the smoke run writes the report, and its round trip is real.

One smoke run (stdlib suite, block 4: AR, export, import, three block models) is shared by the
tests; the round-trip check is then shown to fail when the imported run is tampered with.
"""
import os
import re

import jax
import numpy as np
import pytest

from bdiff import runs, sharding
from bdiff.train import checkpointing
from bdiff.train import state as state_lib
from experiments import adapt_ar


def one_device_mesh():
  cfg = adapt_ar.base_config("stdlib", adapt_ar.smoke_sizes("stdlib"))
  return sharding.make_mesh(cfg.mesh, devices=jax.devices()[:1])


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
  root = tmp_path_factory.mktemp("adapt_ar")
  out = root / "report.md"
  results = adapt_ar.main(["--smoke", "--suites", "stdlib", "--blocks", "4", "--workdir",
                           str(root / "runs"), "--out", str(out)])
  return root, results, out.read_text()


def test_report_has_one_row_per_model_with_draw_spread(smoke):
  _, results, text = smoke
  rows = [line for line in text.splitlines() if line.startswith("| ")]
  assert rows[0].startswith("| block | model | training tokens | held-out NLL bound")
  assert [r.split(" | ")[1] for r in rows[1:]] == [
      "AR (exact NLL; exported, re-imported)", "adapted", "adapted + curriculum",
      "from scratch"]
  for row in rows[2:]:  # mean ± s.d. over the smoke's 2 draws, then the paired difference
    assert re.search(r"\| \d+\.\d{4} ± \d+\.\d{4} \| ", row), row
  for row in rows[2:4]:
    assert re.search(r"\| [+-]\d+\.\d{4} ± \d+\.\d{4} \((better|worse|tie)\) \|$", row), row
  assert rows[4].endswith("| (reference) |")
  assert "3 AR + 4 adapt" in rows[2] and "| 7 steps" in rows[4]  # equal total steps
  assert "Command: `python -m experiments.adapt_ar --smoke" in text
  assert "Block 4, best NELBO first" in text and "![NELBO by variant](report.png)" in text
  assert os.path.getsize(smoke[0] / "report.png") > 1000
  assert len(results[0]["rows"]) == 3


def test_round_trip_happened_and_adaptation_started_from_it(smoke):
  root, results, _ = smoke
  trip = results[0]["round_trip"]
  suite = root / "runs" / "stdlib"
  assert trip["bit_exact"] and trip["family"] == "qwen3" and trip["tensors"] > 0
  for folder in ("ar_hf", "ar_hf_again"):  # the export and the re-export of the import
    assert adapt_ar.sha256(str(suite / folder / "model.safetensors")) == trip["sha256"]
  assert (suite / "ar_imported" / "hf" / "bdiff_convert.json").is_file()
  # The adapted runs started from the import: their step-0 checkpoint holds its weights
  # bit for bit; the from-scratch run has no step 0 (it started from a random init).
  mesh = one_device_mesh()
  _, imported, _ = runs.restore_params(str(suite / "ar_imported"), mesh=mesh)
  for name in ("b4_adapt", "b4_adapt_curr"):
    cfg = runs.run_config(str(suite / name))
    _, _, abstract, shardings = state_lib.build(cfg, mesh)
    start = checkpointing.restore_subtree(str(suite / name), "params", abstract.params,
                                          shardings.params, step=0)
    for a, b in zip(jax.tree.leaves(start), jax.tree.leaves(imported)):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert 0 not in checkpointing.manager(str(suite / "b4_scratch"), create=False).all_steps()


def test_round_trip_check_fails_on_a_changed_tensor(smoke):
  root, _, _ = smoke
  mesh = one_device_mesh()
  tensors = adapt_ar.hf_view(str(root / "runs" / "stdlib" / "ar"), mesh)
  adapt_ar.compare_tensors(tensors, dict(tensors))
  name = "model.norm.weight"  # one weight moved by one ulp must be caught
  bumped = dict(tensors, **{name: tensors[name].copy()})
  bumped[name][0] = np.nextafter(bumped[name][0], np.float32(np.inf))
  with pytest.raises(ValueError, match=f"round trip changed tensor {name}"):
    adapt_ar.compare_tensors(tensors, bumped)
  with pytest.raises(ValueError, match="tensor names"):
    adapt_ar.compare_tensors(tensors, {k: v for k, v in tensors.items() if k != name})
