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
  """A venv without bdiff whose interpreter sees our dependencies, registered as the Jupyter
  kernel KERNEL (through JUPYTER_PATH); returns its site-packages."""
  venv = tmp_path / "venv"
  subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
  python = venv / "bin" / "python"
  site = pathlib.Path(subprocess.run(
      [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
      check=True, capture_output=True, text=True).stdout.strip())
  (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
  spec = tmp_path / "jupyter" / "kernels" / KERNEL
  spec.mkdir(parents=True)
  (spec / "kernel.json").write_text(json.dumps({
      "argv": [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
      "display_name": "bdiff CI (Colab-like)", "language": "python"}))
  return site


def execute(nb, checkout, tmp_path, monkeypatch, **env) -> list[str]:
  """Run ``nb`` in the kernel :func:`_fresh_kernel` made, as Colab would; returns each code
  cell's text output (and fails on any cell's error)."""
  for key, value in dict(JUPYTER_PATH=str(tmp_path / "jupyter"), BDIFF_SOURCE=str(checkout),
                         BDIFF_OFFLINE_INSTALL="1", BDIFF_NOTEBOOK_TINY="1", MPLBACKEND="Agg",
                         XLA_FLAGS="", TMPDIR=str(tmp_path), PYTHONPATH="", **env).items():
    monkeypatch.setenv(key, value)
  cwd = tmp_path / "content"  # like Colab's /content: no checkout around the notebook
  cwd.mkdir()
  nbclient.NotebookClient(nb, timeout=300, kernel_name=KERNEL,
                          resources={"metadata": {"path": str(cwd)}}).execute()
  nbformat.write(nb, tmp_path / "executed.ipynb")  # for a failure's post-mortem
  errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
  assert not errors
  return ["".join(o.get("text", "") for o in c.get("outputs", []))
          for c in nb.cells if c.cell_type == "code"]


def run_notebook(name: str, checkout, tmp_path, monkeypatch, **env) -> list[str]:
  """Execute notebooks/NAME in a fresh kernel, install cell first."""
  _fresh_kernel(tmp_path)
  texts = execute(nbformat.read(NOTEBOOKS / name, as_version=4), checkout, tmp_path,
                  monkeypatch, **env)
  assert texts[0].startswith("installing bdiff") and "no restart needed" in texts[0], texts[0]
  # The kernel imports the bdiff the install cell put into its environment.
  assert f"from {tmp_path / 'venv'}/" in texts[1], texts[1]
  return texts


def install_cell(name: str) -> str:
  nb = nbformat.read(NOTEBOOKS / name, as_version=4)
  return next(c for c in nb.cells if c.cell_type == "code").source


def sample_texts(output: str) -> list[str]:
  """The decoded texts of the lines ``'prompt' -> 'text' ...``."""
  return [ast.literal_eval(m) for m in re.findall(r" -> ('(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\")",
                                                   output)]


def test_install_cells_are_the_same_code():
  """One install procedure: the notebooks' install cells differ only in their EXTRAS line."""
  cells = [[line for line in install_cell(name).splitlines() if not line.startswith("EXTRAS =")]
           for name in ("quickstart.ipynb", "adapt_hf_model.ipynb")]
  assert cells[0] == cells[1]


def test_install_cell_asks_for_a_restart_when_it_replaces_an_imported_package(
    checkout, tmp_path, monkeypatch):
  """An older bdiff (0.0.1, whose module ``bdiff_old`` the session has imported) is replaced by
  the install; the running process keeps the old code, so the cell must say to restart."""
  site = _fresh_kernel(tmp_path)
  (site / "bdiff_old.py").write_text("")
  info = site / "bdiff-0.0.1.dist-info"
  info.mkdir()
  (info / "METADATA").write_text("Metadata-Version: 2.1\nName: bdiff\nVersion: 0.0.1\n")
  (info / "top_level.txt").write_text("bdiff_old\n")
  (info / "RECORD").write_text("bdiff_old.py,,\n" + "".join(
      f"bdiff-0.0.1.dist-info/{f},,\n" for f in ("METADATA", "top_level.txt", "RECORD")))
  nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("import bdiff_old"),
                                       nbformat.v4.new_code_cell(install_cell("quickstart.ipynb"))])
  out = execute(nb, checkout, tmp_path, monkeypatch)[1]
  assert "RESTART NEEDED" in out and "'bdiff': ('0.0.1', '0.1.0')" in out, out
  assert not (site / "bdiff_old.py").exists()  # pip did replace the old distribution


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
