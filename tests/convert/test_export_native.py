"""Exporting a run bdiff trained itself: a true AR model (block 1, token shift) becomes a
Qwen3/Llama checkpoint computing the same logits; anything else is refused, naming why."""
import json
import os

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file

from bdiff import config as config_lib
from bdiff import convert, masks, runs, sharding
from bdiff.models import make_model
from bdiff.train import checkpointing
from bdiff.train import state as state_lib


def native_run(workdir: str, block: int, shift: bool) -> str:
  cfg = config_lib.base_config()
  cfg.model.update(d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8, mlp_dim=64,
                   qk_norm=True, dtype="float32")
  cfg.diffusion.update(block_size=block, token_shift=shift)
  mesh = sharding.make_mesh(cfg.mesh)
  model, tx, _, shardings = state_lib.build(cfg, mesh)
  state = state_lib.init_state(model, tx, cfg, mesh, shardings)
  checkpointing.save(checkpointing.manager(workdir), 0, state,
                     config_dict=config_lib.to_dict(cfg), data_position={"next_step": 0})
  return workdir


def causal_logits(model_cfg, params, tokens):
  n = tokens.shape[1]
  positions = np.broadcast_to(np.arange(n, dtype=np.int32), tokens.shape)
  return np.asarray(make_model(model_cfg).apply({"params": params}, tokens, positions,
                                                masks.block_causal(n, n, 1)))


def test_ar_run_exports_as_qwen3_with_the_scaled_head_untied(tmp_path):
  run = native_run(str(tmp_path / "run"), 1, True)
  out = str(tmp_path / "export")
  summary = convert.export_to_hf(run, out)
  with open(os.path.join(out, "config.json"), encoding="utf-8") as f:
    hf = json.load(f)
  assert summary["family"] == "qwen3" and hf["tie_word_embeddings"] is False
  tensors = load_file(os.path.join(out, "model.safetensors"))
  np.testing.assert_array_equal(tensors["lm_head.weight"],
                                tensors["model.embed_tokens.weight"] * np.float32(32 ** -0.5))
  # Read back as a HF checkpoint: the same next-token logits.
  cfg, params, _ = runs.restore_params(run)
  hf_model = convert.model_config_from_hf(hf)
  back_cfg = config_lib.base_config()
  back_cfg.model.update(hf_model.to_dict())
  mesh = sharding.make_mesh(back_cfg.mesh)
  _, _, abstract, shardings = state_lib.build(back_cfg, mesh)
  back, _, _ = convert.load_params(out, back_cfg.model, abstract.params, shardings.params,
                                   progress=False)
  tokens = np.asarray(jax.random.randint(jax.random.key(0), (2, 10), 0, 259))
  np.testing.assert_allclose(causal_logits(back_cfg.model, back, tokens),
                             causal_logits(cfg.model, params, tokens), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("block,shift", [(4, False), (1, False)])
def test_non_ar_run_export_is_refused(tmp_path, block, shift):
  run = native_run(str(tmp_path / "run"), block, shift)
  with pytest.raises(ValueError, match=f"diffusion.block_size={block}, "
                                       f"diffusion.token_shift={shift}"):
    convert.export_to_hf(run, str(tmp_path / "export"))
