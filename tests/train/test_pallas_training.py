"""Training through the Pallas kernel (TPU kernel, interpret mode) matches the XLA reference."""
import json

import jax
import numpy as np

from bdiff import sharding
from bdiff.train import loop
from configs import tiny


def _losses(tmp_path, name, **model):
  cfg = tiny.get_config()
  cfg.train.update(steps=3, log_every=1, eval_batches=1, progress=False, global_batch=4,
                   seq_len=16)
  cfg.model.update(**model)
  cfg.mesh.update(data=1, fsdp=1, tensor=1)
  mesh = sharding.make_mesh(cfg.mesh, devices=jax.devices()[:1])
  out = loop.train(cfg, str(tmp_path / name), mesh=mesh)
  with open(tmp_path / name / "metrics.jsonl", encoding="utf-8") as f:
    losses = [json.loads(line)["loss"] for line in f]
  return losses, out["eval_nll"]


def test_pallas_training_matches_xla(tmp_path):
  xla, xla_eval = _losses(tmp_path, "xla", attention_impl="xla")
  pallas, pallas_eval = _losses(tmp_path, "pallas", attention_impl="pallas",
                                pallas_backend="tpu_interpret")
  assert len(xla) == 3
  # fp32: online softmax in the kernel vs one-shot softmax in XLA differ only by rounding.
  np.testing.assert_allclose(pallas, xla, rtol=2e-5, atol=2e-5)
  np.testing.assert_allclose(pallas_eval, xla_eval, rtol=2e-5, atol=2e-5)
