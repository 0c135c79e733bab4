"""Built-in, download-free corpus: the Python standard library's own source.

Every machine with Python has it, so CPU smoke runs and tests train on real code without a
network. Its exact content depends on the Python build, so runs record `stdlib_fingerprint()`.
"""
from __future__ import annotations

import functools
import hashlib
import os
import sys
import sysconfig

_SPLITS = ("all", "train", "valid")
_EXCLUDED_DIRS = frozenset({"site-packages", "test", "tests", "__pycache__"})
_EXCLUDED_PATHS = ("idlelib/idle_test",)


def stdlib_root() -> str:
  """Directory of the running interpreter's standard library."""
  return sysconfig.get_paths()["stdlib"]


@functools.lru_cache(maxsize=1)
def stdlib_files() -> tuple[str, ...]:
  """Relative paths (posix, sorted) of the stdlib `*.py` files in the corpus."""
  root = stdlib_root()
  found = []
  for dirpath, dirnames, filenames in os.walk(root):
    rel_dir = os.path.relpath(dirpath, root).replace(os.sep, "/")
    prefix = "" if rel_dir == "." else rel_dir + "/"
    # Pruning in place stops os.walk from descending into excluded trees.
    dirnames[:] = [d for d in dirnames if d not in _EXCLUDED_DIRS
                   and prefix + d not in _EXCLUDED_PATHS]
    found.extend(prefix + f for f in filenames if f.endswith(".py"))
  return tuple(sorted(found))


@functools.lru_cache(maxsize=4096)
def _read(rel_path: str) -> str:
  with open(os.path.join(stdlib_root(), rel_path), encoding="utf-8",
            errors="replace") as f:
    return f.read()


def in_valid_split(rel_path: str, valid_fraction: float) -> bool:
  """Deterministic split: a file is held out iff its path hash falls below the fraction."""
  h = int.from_bytes(hashlib.sha256(rel_path.encode()).digest()[:8], "big")
  return h / 2.0**64 < valid_fraction


def stdlib_paths(split: str = "all", valid_fraction: float = 0.02,
                 max_docs: int | None = None) -> list[str]:
  """Relative paths of the files in `split` ("all" | "train" | "valid"), at most max_docs."""
  if split not in _SPLITS:
    raise ValueError(f"split must be one of {_SPLITS}, got {split!r}")
  if not 0.0 <= valid_fraction < 1.0:
    raise ValueError(f"valid_fraction must be in [0, 1), got {valid_fraction}")
  if max_docs is not None and max_docs < 0:
    raise ValueError(f"max_docs must be >= 0 or None, got {max_docs}")
  paths = [p for p in stdlib_files()
           if split == "all" or in_valid_split(p, valid_fraction) == (split == "valid")]
  return paths if not max_docs else paths[:max_docs]


def stdlib_documents(max_docs: int | None = None, split: str = "all",
                     valid_fraction: float = 0.02) -> list[str]:
  """Source text of the stdlib files of `split`, one document per file, sorted by path.

  Args:
    max_docs: keep only the first max_docs files (None or 0 = all).
    split: "all", "train" or "valid" (held out by a hash of the relative path).
    valid_fraction: fraction of files (in expectation) that go to "valid".
  """
  return [_read(p) for p in stdlib_paths(split, valid_fraction, max_docs)]


def stdlib_fingerprint(split: str = "all", valid_fraction: float = 0.02,
                       max_docs: int | None = None) -> str:
  """sha256 over (path, content) of the files used, their count and the Python version."""
  return _fingerprint(tuple(stdlib_paths(split, valid_fraction, max_docs)))


@functools.lru_cache(maxsize=16)
def _fingerprint(paths: tuple[str, ...]) -> str:
  h = hashlib.sha256()
  h.update(f"python={sys.version_info[:3]};count={len(paths)}".encode())
  for p in paths:
    h.update(b"\0" + p.encode() + b"\0" + _read(p).encode("utf-8", errors="replace"))
  return h.hexdigest()
