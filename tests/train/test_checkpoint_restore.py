"""Inference restore: only the params subtree is read from a checkpoint, strictly."""
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from bdiff import config as config_lib
from bdiff import runs
from bdiff import sharding as sharding_lib
from bdiff.train import checkpointing
from bdiff.train import state as state_lib


def tiny_cfg(ema_decay=0.9, **model):
  cfg = config_lib.base_config()
  cfg.model.update({**dict(d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, head_dim=16,
                           mlp_dim=64, dtype="float32"), **model})
  cfg.diffusion.block_size = 4
  cfg.train.seq_len = 16
  cfg.optim.ema_decay = ema_decay
  return cfg


def _saved_run(tmp_path, cfg):
  mesh = sharding_lib.make_mesh(cfg.mesh)
  model, tx, _, shardings = state_lib.build(cfg, mesh)
  state = state_lib.init_state(model, tx, cfg, mesh, shardings)
  if state.ema_params is not None:  # make EMA and params differ, so we see which was read
    state = state.replace(ema_params=jax.tree.map(lambda x: x + 1.0, state.ema_params))
  mgr = checkpointing.manager(str(tmp_path))
  checkpointing.save(mgr, 3, state, config_dict=config_lib.to_dict(cfg), data_position={})
  return state


@pytest.fixture(name="restores")
def _restores(monkeypatch):
  """Spy on every Orbax pytree restore: the top-level items asked for, and leaves returned."""
  calls = []
  original = ocp.PyTreeCheckpointer.restore

  def spy(self, directory, *args, **kwargs):
    out = original(self, directory, *args, **kwargs)
    calls.append((sorted(kwargs["args"].item), len(jax.tree.leaves(out))))
    return out

  monkeypatch.setattr(ocp.PyTreeCheckpointer, "restore", spy)
  return calls


@pytest.mark.parametrize("ema_decay, name", [(0.9, "ema_params"), (0.0, "params")])
def test_inference_restores_only_the_params(tmp_path, restores, ema_decay, name):
  state = _saved_run(tmp_path, tiny_cfg(ema_decay))
  cfg, params, tok = runs.restore_params(str(tmp_path))
  expected = getattr(state, name)
  assert cfg.optim.ema_decay == ema_decay and tok.vocab_size == 259
  assert restores == [([name], len(jax.tree.leaves(expected)))]  # no Adam moments, no step
  jax.tree.map(np.testing.assert_array_equal, params, expected)


def test_inference_restore_refuses_a_mismatched_model(tmp_path, restores):
  _saved_run(tmp_path, tiny_cfg())
  with pytest.raises(ValueError, match=r"step 3 under .*: ema_params embed: saved float32\[260, 32\]"):
    runs.restore_params(str(tmp_path), tiny_cfg(d_model=64, head_dim=32))
  with pytest.raises(ValueError, match=r"does not match the model: missing \['head/kernel'\]"):
    runs.restore_params(str(tmp_path), tiny_cfg(tie_embeddings=False))
  assert not restores  # refused before reading any array


def test_inference_refuses_non_finite_weights(tmp_path):
  """Flipped bytes can restore as NaN weights without any error from the storage layers."""
  cfg = tiny_cfg(ema_decay=0.0)
  mesh = sharding_lib.make_mesh(cfg.mesh)
  model, tx, _, shardings = state_lib.build(cfg, mesh)
  state = state_lib.init_state(model, tx, cfg, mesh, shardings)
  params = dict(state.params, embed=state.params["embed"].at[3, 5].set(np.nan))
  checkpointing.save(checkpointing.manager(str(tmp_path)), 2, state.replace(params=params),
                     config_dict=config_lib.to_dict(cfg), data_position={})
  with pytest.raises(ValueError, match=r"step 2 .*: params: non-finite values in \['embed'\]"):
    runs.restore_params(str(tmp_path))


def test_unreadable_checkpoint_is_one_error_naming_the_step(tmp_path):
  _saved_run(tmp_path, tiny_cfg())
  (tmp_path / "checkpoints" / "3" / "state" / "_METADATA").write_bytes(b"")
  with pytest.raises(ValueError, match=r"checkpoint step 3 under .* is unreadable \(JSONDecode"):
    runs.restore_params(str(tmp_path))
