"""Restoring checkpoints: inference reads only the params subtree, strictly; a corrupt newest
checkpoint (unreadable, or NaN weights from flipped bytes) falls back to the previous one."""
import os

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


def _state(cfg, shift=0.0):
  """(state, abstract state, shardings); ``shift`` is added to every param (tells steps apart)."""
  mesh = sharding_lib.make_mesh(cfg.mesh)
  model, tx, abstract, shardings = state_lib.build(cfg, mesh)
  state = state_lib.init_state(model, tx, cfg, mesh, shardings)
  state = state.replace(params=jax.tree.map(lambda x: x + shift, state.params))
  if state.ema_params is not None:  # make EMA and params differ, so we see which was read
    state = state.replace(ema_params=jax.tree.map(lambda x: x + 1.0, state.ema_params))
  return state, abstract, shardings


def _save(workdir, cfg, step, state):
  checkpointing.save(checkpointing.manager(str(workdir)), step, state,
                     config_dict=config_lib.to_dict(cfg), data_position={})


def _saved_run(tmp_path, cfg):
  state = _state(cfg)[0]
  _save(tmp_path, cfg, 3, state)
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


def _nan_weights(state):
  return state.replace(params=dict(state.params,
                                   embed=state.params["embed"].at[3, 5].set(np.nan)))


def test_inference_refuses_non_finite_weights(tmp_path):
  """Flipped bytes can restore as NaN weights without any error from the storage layers."""
  cfg = tiny_cfg(ema_decay=0.0)
  _save(tmp_path, cfg, 2, _nan_weights(_state(cfg)[0]))
  with pytest.raises(ValueError, match=r"step 2 .*: params: non-finite values in \['embed'\]"):
    runs.restore_params(str(tmp_path))


def test_unreadable_checkpoint_is_one_error_naming_the_step(tmp_path):
  _saved_run(tmp_path, tiny_cfg())
  (tmp_path / "checkpoints" / "3" / "state" / "_METADATA").write_bytes(b"")
  with pytest.raises(ValueError, match=r"checkpoint step 3 under .* is unreadable \(JSONDecode"):
    runs.restore_params(str(tmp_path))


def _empty_metadata(workdir, step):
  (workdir / "checkpoints" / str(step) / "state" / "_METADATA").write_bytes(b"")


@pytest.mark.parametrize("corrupt", ["nan", "unreadable"])
def test_training_resume_falls_back_past_a_corrupt_checkpoint(tmp_path, caplog, corrupt):
  cfg = tiny_cfg(ema_decay=0.0)
  good, abstract, shardings = _state(cfg)
  _save(tmp_path, cfg, 1, good)
  newer = _state(cfg, shift=1.0)[0]
  _save(tmp_path, cfg, 2, _nan_weights(newer) if corrupt == "nan" else newer)
  if corrupt == "unreadable":
    _empty_metadata(tmp_path, 2)
  mgr = checkpointing.manager(str(tmp_path))
  state, meta = checkpointing.restore(mgr, abstract, shardings)
  assert meta["step"] == 1
  jax.tree.map(np.testing.assert_array_equal, state.params, good.params)
  assert "checkpoint step 2" in caplog.text and "trying the previous checkpoint" in caplog.text
  assert os.listdir(tmp_path / "checkpoints_corrupt") == ["2"]  # kept, out of the way
  assert mgr.all_steps() == [1]
  _save(tmp_path, cfg, 2, newer)  # training can save that step again
  state, meta = checkpointing.restore(checkpointing.manager(str(tmp_path)), abstract, shardings)
  assert meta["step"] == 2


def test_no_intact_checkpoint_raises_the_newest_error_and_moves_nothing(tmp_path):
  cfg = tiny_cfg(ema_decay=0.0)
  state, abstract, shardings = _state(cfg)
  for step in (1, 2):
    _save(tmp_path, cfg, step, state)
    _empty_metadata(tmp_path, step)
  with pytest.raises(ValueError, match="checkpoint step 2 in .* is unreadable"):
    checkpointing.restore(checkpointing.manager(str(tmp_path)), abstract, shardings)
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["1", "2"]
  assert not (tmp_path / "checkpoints_corrupt").exists()


def test_inference_falls_back_past_a_corrupt_checkpoint_without_moving_it(tmp_path, caplog):
  cfg = tiny_cfg(ema_decay=0.0)
  good = _state(cfg)[0]
  _save(tmp_path, cfg, 1, good)
  _save(tmp_path, cfg, 2, _nan_weights(good))
  _, params, _ = runs.restore_params(str(tmp_path))
  jax.tree.map(np.testing.assert_array_equal, params, good.params)
  assert "checkpoint step 2" in caplog.text
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["1", "2"]
