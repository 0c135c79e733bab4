"""Every shipped config runs one training step ("has a pulse"), shrunk to CPU size.

Model sizes are kept; batch and sequence length are cut so a 100M model steps on a CPU.
"""
import importlib

import jax
import numpy as np
import pytest

from bdiff import data as data_lib
from bdiff import sharding
from bdiff.train import loop

CONFIGS = ["tiny", "tasks", "stdlib", "owt_bd3lm"]


def _shrink(cfg, tmp_path):
  cfg.train.update(steps=1, global_batch=1, seq_len=min(cfg.train.seq_len, 64),
                   eval_batches=1, log_every=1, progress=False, checkpoint_every=0)
  cfg.mesh.update(data=1, fsdp=1, tensor=1)
  if cfg.data.source == "tensorstore":
    # The real config reads a prepared OWT array; a small one is prepared here instead.
    tok = data_lib.get_tokenizer("bytes")
    src = tmp_path / "corpus.txt"
    src.write_text("def f(x):\n    return x + 1\n" * 400)
    data_lib.prepare([str(src)], str(tmp_path / "store"), tok, show_progress=False)
    cfg.data.update(path=str(tmp_path / "store"), tokenizer="bytes")
  if cfg.data.source == "stdlib":
    cfg.data.max_docs = 30
  if cfg.data.source == "tasks":
    cfg.data.num_task_examples = 200


@pytest.mark.parametrize("name", CONFIGS)
def test_config_runs_one_step(name, tmp_path):
  cfg = importlib.import_module(f"configs.{name}").get_config()
  _shrink(cfg, tmp_path)
  mesh = sharding.make_mesh(cfg.mesh, devices=jax.devices()[:1])
  out = loop.train(cfg, str(tmp_path / "run"), mesh=mesh)
  assert np.isfinite(out["loss"]) and np.isfinite(out["eval_nll"])


@pytest.mark.parametrize("name,arg", [("tiny", "block_size=8"), ("owt_bd3lm", "block_size=4"),
                                      ("tasks", "block_size=4")])
def test_config_variants(name, arg):
  cfg = importlib.import_module(f"configs.{name}").get_config(arg)
  assert cfg.diffusion.block_size == int(arg.split("=")[1])


def test_bad_variant_names_the_key():
  with pytest.raises(ValueError, match="block_size"):
    importlib.import_module("configs.owt_bd3lm").get_config("block_size=5")
