"""The import graph of bdiff/ and pallas_kernels/ forms layers: no circles, no arrow upward.

The layer order is the one written in README's layout map; a module may import modules of its
own layer or below, never above. Function-level imports count too (a lazy import that dodges a
circle is still a circle).
"""
import ast
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Lowest first. A module belongs to the first layer with a prefix that matches it.
LAYERS = (
    ("bdiff.masks", "bdiff.mask_ranges", "bdiff.sharding", "bdiff.flops", "bdiff.distributed"),
    ("pallas_kernels",),
    ("bdiff.attention",),
    ("bdiff.models", "bdiff.diffusion", "bdiff.data"),
    ("bdiff.sampling",),
    ("bdiff.config",),
    ("bdiff.train",),
    ("bdiff.runs", "bdiff.convert"),
    ("bdiff.eval",),
    ("bdiff.cli", "bdiff"),  # the console entry and the curated public API (bdiff/__init__.py)
)


def _modules() -> dict[str, pathlib.Path]:
  mods = {}
  for top in ("bdiff", "pallas_kernels"):
    for path in (ROOT / top).rglob("*.py"):
      name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
      mods[name.removesuffix(".__init__")] = path
  return mods


def _resolve(name: str, mods) -> str | None:
  while name and name not in mods:
    name = name.rpartition(".")[0]
  return name or None


def _graph() -> dict[str, set[str]]:
  mods = _modules()
  edges = {m: set() for m in mods}
  for mod, path in mods.items():
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
      if isinstance(node, ast.Import):
        targets = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
        targets = [f"{node.module}.{a.name}" for a in node.names]
      else:
        continue
      for target in targets:
        dep = _resolve(target, mods)
        # A package's own __init__ importing its submodules is not an arrow up.
        if dep and dep != mod and not dep.startswith(mod + "."):
          edges[mod].add(dep)
  return edges


def _layer(mod: str) -> int:
  for i, prefixes in enumerate(LAYERS):
    if any(mod == p or mod.startswith(p + ".") for p in prefixes if p != "bdiff"):
      return i
  assert mod == "bdiff", f"module {mod} is in no layer: add it to LAYERS and README's map"
  return len(LAYERS) - 1


def test_every_module_has_a_layer():
  for mod in _modules():
    _layer(mod)


def test_no_import_points_up():
  upward = [f"{m} (layer {_layer(m)}) imports {d} (layer {_layer(d)})"
            for m, deps in _graph().items() for d in deps if _layer(d) > _layer(m)]
  assert not upward, "\n".join(upward)


def test_no_import_circles():
  edges = _graph()

  def reaches(a, b, seen):
    if a == b:
      return True
    seen.add(a)
    return any(reaches(c, b, seen) for c in edges[a] if c not in seen)

  circles = sorted(f"{m} <-> {d}" for m, deps in edges.items() for d in deps
                   if reaches(d, m, set()))
  assert not circles, "\n".join(circles)


def test_readme_layout_lists_the_layers_in_order():
  readme = (ROOT / "README.md").read_text(encoding="utf-8")
  section = readme[readme.index("## Layout"):]
  order = [section.index(f"`{p}`") for layer in LAYERS for p in layer[:1]]
  assert order == sorted(order), "README's layer list is not in LAYERS order"


# Import order matters at run time too: ``pallas_kernels`` imports ``bdiff.masks``, which runs
# ``bdiff/__init__.py`` (the whole public API) while the kernels are half imported. Each entry
# point must import first in a fresh interpreter.
ENTRY_POINTS = ("pallas_kernels.block_sparse_attention",
                "pallas_kernels.block_sparse_attention.plan", "bdiff.masks", "bdiff.models",
                "bdiff.convert", "bdiff.cli")


@pytest.mark.parametrize("module", ENTRY_POINTS)
def test_module_imports_first_in_a_fresh_interpreter(module):
  env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-c", f"import {module}"], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-2000:]
