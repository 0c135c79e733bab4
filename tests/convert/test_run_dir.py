"""A converted run is a run: training resumes from the imported weights (fresh optimizer), and
a bfloat16 checkpoint imports exactly and exports back to the same bits."""
import json
import os
import shutil

import jax
import ml_dtypes
import numpy as np
from safetensors.numpy import load_file, save_file

from bdiff import config as config_lib
from bdiff import convert, runs, sharding
from bdiff.train import checkpointing, loop
from tests.convert.conftest import assert_same_tensors, fixture_dir


def test_training_continues_from_the_imported_weights(converted, tmp_path):
  """``bdiff train`` on a converted run: step 0 restores the imported params, the next step
  trains them (a padded vocabulary is accepted; the loss is finite)."""
  workdir = str(tmp_path / "run")
  shutil.copytree(converted("qwen2"), workdir)
  corpus = tmp_path / "corpus.jsonl"
  corpus.write_text("".join(json.dumps({"text": f"def f{i}(a, b):\n    return a + {i}\n"}) + "\n"
                            for i in range(64)), encoding="utf-8")
  with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
    cfg = config_lib.from_dict(json.load(f))
  cfg.data.update(source="text", path=str(corpus))
  cfg.train.update(steps=1, seq_len=16, global_batch=8, progress=False, log_every=1)
  trainer = loop.Trainer.build(cfg, workdir)
  assert trainer.cfg.model.vocab_size == 320 and trainer.data.tokenizer.vocab_size == 300
  state = trainer.init_or_restore(checkpointing.manager(workdir))
  _, imported, _ = runs.restore_params(converted("qwen2"))
  assert int(state.step) == 0
  for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(imported)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert all(not np.asarray(m).any() for m in jax.tree.leaves(state.opt_state)
             if np.ndim(m) > 0)  # fresh Adam moments
  batch = trainer.data.train.batch(0)
  with jax.set_mesh(trainer.mesh):
    _, metrics = trainer.train_step(state, sharding.global_batch(batch, trainer.mesh))
  assert np.isfinite(float(metrics["loss"]))


def test_bfloat16_checkpoint_round_trips(tmp_path):
  """Real checkpoints are bf16: imported as exact fp32 params, computed in bf16, exported bf16
  with the same bits."""
  hf_dir = str(tmp_path / "hf")
  shutil.copytree(fixture_dir("qwen3"), hf_dir)
  path = os.path.join(hf_dir, "model.safetensors")
  bf16 = {k: v.astype(ml_dtypes.bfloat16) for k, v in load_file(path).items()}
  save_file(bf16, path, metadata={"format": "pt"})
  with open(os.path.join(hf_dir, "config.json"), encoding="utf-8") as f:
    hf = json.load(f)
  with open(os.path.join(hf_dir, "config.json"), "w", encoding="utf-8") as f:
    json.dump({**hf, "dtype": "bfloat16"}, f)  # as a bf16 checkpoint declares itself
  summary = convert.convert_from_hf(hf_dir, str(tmp_path / "run"), progress=False)
  assert summary["dtype"] == "bfloat16"
  cfg, params, _ = runs.restore_params(str(tmp_path / "run"))
  assert cfg.model.dtype == "bfloat16"
  assert all(p.dtype == np.float32 for p in jax.tree.leaves(params))
  out = str(tmp_path / "export")
  assert convert.export_to_hf(str(tmp_path / "run"), out)["dtype"] == "bfloat16"
  assert_same_tensors(hf_dir, out)  # bf16 tensors, the same 16 bits
