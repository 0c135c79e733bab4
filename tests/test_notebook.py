"""Executes the notebooks as a Colab user would: a fresh kernel in which bdiff is not installed,
the install cell first (pointing at this checkout through BDIFF_SOURCE), then every cell.

The kernel runs in a throwaway virtual environment whose site-packages lists this environment's
site-packages as a plain path: every dependency is importable (nothing is downloaded), but not
bdiff itself, whose editable install hook (a ``.pth`` file there) is not run. The install cell
then builds and installs bdiff from a copy of the checkout's working tree (tracked and
untracked, not ignored, files; a copy so that concurrent runs do not share setuptools' in-tree
``build/``) with ``BDIFF_OFFLINE_INSTALL=1``: ``pip --no-deps --no-build-isolation --no-index``.
Notebooks run at tiny size (``BDIFF_NOTEBOOK_TINY=1``) on one CPU device.
"""
import ast
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import sysconfig

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("setuptools")  # builds bdiff without network (--no-build-isolation)

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
SDAR = ROOT / "tests" / "fixtures" / "hf" / "sdar"
KERNEL = "bdiff-colab-ci"


@pytest.fixture(scope="module", name="checkout")
def _checkout(tmp_path_factory) -> pathlib.Path:
  """The checkout's working tree, copied (what a clone of it would hold)."""
  files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                         check=True, capture_output=True).stdout.decode().split("\0")
  dest = tmp_path_factory.mktemp("checkout")
  for name in filter(None, files):
    if (ROOT / name).is_file():  # a deleted but still tracked file is skipped
      (dest / name).parent.mkdir(parents=True, exist_ok=True)
      shutil.copy2(ROOT / name, dest / name)
  return dest


def _fresh_kernel(tmp_path: pathlib.Path) -> pathlib.Path:
  """A venv without bdiff whose interpreter sees our dependencies; returns a JUPYTER_PATH
  holding its kernel spec."""
  venv = tmp_path / "venv"
  subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
  python = venv / "bin" / "python"
  site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()"
                         "['purelib'])"], check=True, capture_output=True, text=True).stdout
  pathlib.Path(site.strip(), "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
  spec = tmp_path / "jupyter" / "kernels" / KERNEL
  spec.mkdir(parents=True)
  (spec / "kernel.json").write_text(json.dumps({
      "argv": [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
      "display_name": "bdiff CI (Colab-like)", "language": "python"}))
  return tmp_path / "jupyter"


def run_notebook(name: str, checkout, tmp_path, monkeypatch, **env) -> list[str]:
  """Execute notebooks/NAME in a fresh kernel; returns each code cell's text output."""
  monkeypatch.setenv("JUPYTER_PATH", str(_fresh_kernel(tmp_path)))
  for key, value in dict(BDIFF_SOURCE=str(checkout), BDIFF_OFFLINE_INSTALL="1",
                         BDIFF_NOTEBOOK_TINY="1", MPLBACKEND="Agg", XLA_FLAGS="",
                         TMPDIR=str(tmp_path), PYTHONPATH="", **env).items():
    monkeypatch.setenv(key, value)
  cwd = tmp_path / "content"  # like Colab's /content: no checkout around the notebook
  cwd.mkdir()
  nb = nbformat.read(NOTEBOOKS / name, as_version=4)
  nbclient.NotebookClient(nb, timeout=300, kernel_name=KERNEL,
                          resources={"metadata": {"path": str(cwd)}}).execute()
  nbformat.write(nb, tmp_path / name)  # the executed notebook, for a failure's post-mortem
  errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
  assert not errors
  texts = ["".join(o.get("text", "") for o in c.get("outputs", []))
           for c in nb.cells if c.cell_type == "code"]
  assert texts[0].startswith("installing bdiff") and "no restart needed" in texts[0], texts[0]
  # The kernel imports the bdiff the install cell put into its environment.
  assert f"from {tmp_path / 'venv'}/" in texts[1], texts[1]
  return texts


def sample_texts(output: str) -> list[str]:
  """The decoded texts of the lines ``'prompt' -> 'text' ...``."""
  return [ast.literal_eval(m) for m in re.findall(r" -> ('(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\")",
                                                   output)]


def test_install_cells_are_the_same_code(checkout):
  """One install procedure: the notebooks' install cells differ only in their EXTRAS line."""
  cells = []
  for name in ("quickstart.ipynb", "adapt_hf_model.ipynb"):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    first = next(c for c in nb.cells if c.cell_type == "code").source
    cells.append([line for line in first.splitlines() if not line.startswith("EXTRAS =")])
  assert cells[0] == cells[1]


def test_quickstart_notebook_runs(checkout, tmp_path, monkeypatch):
  texts = run_notebook("quickstart.ipynb", checkout, tmp_path, monkeypatch)
  sampled, table = texts[3], texts[4]
  assert "--- ar {}" in sampled and "--- threshold {'threshold': 0.9}" in sampled
  samples = sample_texts(sampled)
  assert len(samples) == 8 and all(s.strip() for s in samples), samples
  assert "| reverse |" in table and "ci95" in table


def test_adapt_hf_model_notebook_runs(checkout, tmp_path, monkeypatch):
  texts = run_notebook("adapt_hf_model.ipynb", checkout, tmp_path, monkeypatch,
                       BDIFF_HF_MODEL=str(SDAR))
  converted, sampled, tuned, exported = texts[2:]
  assert "'family': 'sdar'" in converted and "decoding=sdar_dynamic chat=True" in converted
  for header in ("--- sdar_dynamic {}", "--- threshold {'threshold': 0.9}",
                 "--- static {'steps': 2}"):
    assert header in sampled
  assert len(sample_texts(sampled)) == 6 and "loss by step: [(2," in tuned
  assert "bit for bit (float32): True" in exported
