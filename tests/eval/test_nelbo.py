"""Held-out NELBO over several Monte Carlo draws of a trained run (experiments' noise)."""
import jax
import pytest

from bdiff import sharding
from bdiff.eval import nelbo
from bdiff.train import loop
from configs import tiny


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  cfg = tiny.get_config()
  cfg.train.update(steps=2, eval_batches=1, progress=False, log_every=1)
  cfg.mesh.update(data=1, fsdp=1, tensor=1)
  workdir = str(tmp_path_factory.mktemp("nelbo"))
  mesh = sharding.make_mesh(cfg.mesh, devices=jax.devices()[:1])
  out = loop.train(cfg, workdir, mesh=mesh)
  return cfg, workdir, mesh, out


def test_draw_zero_is_the_trainings_estimate_and_draws_differ(run):
  cfg, workdir, mesh, out = run
  draws = nelbo.nelbo_draws(cfg, workdir, 3, mesh=mesh)
  assert len(draws) == 3
  assert draws[0]["nll"] == pytest.approx(out["eval_nll"], rel=1e-6)
  summary = nelbo.summarize(draws)
  assert summary.n == 3 and summary.sd > 0  # independent times and masks per draw


def test_draws_must_be_positive(run):
  cfg, workdir, mesh, _ = run
  with pytest.raises(ValueError, match="draws"):
    nelbo.nelbo_draws(cfg, workdir, 0, mesh=mesh)
