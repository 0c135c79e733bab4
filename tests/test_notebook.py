"""Executes notebooks/quickstart.ipynb end to end at tiny size (BDIFF_NOTEBOOK_TINY=1).

The kernel is the ``python3`` kernelspec that ipykernel provides for the running interpreter
(the test's own environment), started in the repository root so ``import bdiff`` resolves to
this checkout.
"""
import os
import pathlib

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "quickstart.ipynb"


def test_quickstart_notebook_runs(monkeypatch, tmp_path):
  monkeypatch.setenv("BDIFF_NOTEBOOK_TINY", "1")
  monkeypatch.setenv("PYTHONPATH", f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
  monkeypatch.setenv("MPLBACKEND", "Agg")
  # One CPU device is enough, and faster to start than the 8 the test suite fakes.
  monkeypatch.setenv("XLA_FLAGS", "")
  monkeypatch.setenv("TMPDIR", str(tmp_path))
  nb = nbformat.read(NOTEBOOK, as_version=4)
  client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                   resources={"metadata": {"path": str(ROOT)}})
  client.execute()
  outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                    for o in c.get("outputs", []))
  assert "--- ar" in outputs and "--- threshold" in outputs
  assert "| reverse |" in outputs and "ci95" in outputs
  errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
  assert not errors
