"""The crash-and-resume scaffold of the resume-exactness tests."""
import pytest

from bdiff.train import loop


class Crash(RuntimeError):
  """A simulated preemption or failure."""


def train_straight_and_resumed(cfg, tmp_path, mesh, crash_after: int) -> tuple[str, str]:
  """Train ``cfg`` straight through in ``tmp_path/straight``; in ``tmp_path/resumed`` crash
  after step ``crash_after``, then restart. Returns the two run directories."""
  straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
  loop.train(cfg, straight, mesh=mesh)

  def crash(step):
    if step == crash_after:
      raise Crash(f"simulated preemption after step {crash_after}")

  with pytest.raises(Crash):
    loop.train(cfg, resumed, mesh=mesh, on_step=crash)
  loop.train(cfg, resumed, mesh=mesh)
  return straight, resumed
