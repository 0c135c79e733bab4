"""The `bdiff` command: usage, and config errors that fail before anything compiles."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_cli(*args, timeout=120):
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "bdiff.cli", *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=timeout, check=False)


def test_usage_lists_commands():
  proc = run_cli()
  assert proc.returncode == 2 and "train|sample|eval|prepare|bench" in proc.stderr


def test_bad_override_fails_early_naming_the_key(tmp_path):
  proc = run_cli("train", "--config", "configs/tiny.py", "--workdir", str(tmp_path),
                 "--config.diffusion.block_size=5")
  assert proc.returncode != 0
  assert "diffusion.block_size" in proc.stderr
  assert not (tmp_path / "checkpoints").exists()


def test_unknown_override_key_is_rejected(tmp_path):
  proc = run_cli("train", "--config", "configs/tiny.py", "--workdir", str(tmp_path),
                 "--config.model.d_modle=3")
  assert proc.returncode != 0 and "d_modle" in proc.stderr


def test_prepare_writes_a_token_store(tmp_path):
  src = tmp_path / "a.txt"
  src.write_text("hello world\n")
  proc = run_cli("prepare", "--inputs", str(src), "--out", str(tmp_path / "store"))
  assert proc.returncode == 0, proc.stderr
  assert '"num_tokens": 13' in proc.stdout  # 12 bytes + EOS
