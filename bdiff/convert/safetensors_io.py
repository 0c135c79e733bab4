"""Reading a Hugging Face checkpoint's safetensors (one file or shards with their index)
slice by slice, and writing one back tensor by tensor.

Only headers are read up front (names, shapes, dtypes); tensor bytes are read per requested
slice, so a host never loads more of a tensor than its devices hold.
"""
from __future__ import annotations

import contextlib
import json
import os

import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy, which safetensors returns)
import numpy as np

try:  # the optional `hf` extra: bdiff without it still imports (and trains, samples)
  from safetensors import safe_open
except ImportError:
  safe_open = None

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
FLOAT_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}
ST_DTYPES = {name: code for code, name in FLOAT_DTYPES.items()}


def require_hf_extra() -> None:
  """ImportError with the install line when safetensors (the `hf` extra) is missing."""
  if safe_open is None:
    raise ImportError("Hugging Face conversion needs safetensors: pip install 'bdiff[hf]'")


def _files(hf_dir: str) -> dict[str, str]:
  """Tensor name -> file path, from the index if there is one."""
  require_hf_extra()
  index = os.path.join(hf_dir, INDEX)
  if os.path.isfile(index):
    with open(index, encoding="utf-8") as f:
      weight_map = json.load(f).get("weight_map")
    if not isinstance(weight_map, dict):
      raise ValueError(f"{index} has no weight_map")
    return {name: os.path.join(hf_dir, file) for name, file in weight_map.items()}
  single = os.path.join(hf_dir, SINGLE)
  if not os.path.isfile(single):
    raise ValueError(f"{hf_dir!r} has neither {SINGLE} nor {INDEX}")
  with safe_open(single, framework="np") as f:
    return {name: single for name in f.keys()}


class CheckpointReader(contextlib.ExitStack):
  """``with CheckpointReader(dir) as r``: ``r.header`` maps names to (shape, dtype name);
  ``r.read(name, slices)`` returns that slice as float32 numpy."""

  def __init__(self, hf_dir: str):
    super().__init__()
    self.hf_dir = hf_dir
    self._file_of = _files(hf_dir)
    self._handles: dict[str, object] = {}
    self.header: dict[str, tuple[tuple[int, ...], str]] = {}

  def __enter__(self):
    super().__enter__()
    for path in sorted(set(self._file_of.values())):
      if not os.path.isfile(path):
        raise ValueError(f"shard {os.path.basename(path)} named in {INDEX} is missing")
      self._handles[path] = self.enter_context(safe_open(path, framework="np"))
    for name, path in self._file_of.items():
      if name not in self._handles[path].keys():
        raise ValueError(f"tensor {name} is not in {os.path.basename(path)} as {INDEX} says")
      sl = self._handles[path].get_slice(name)
      self.header[name] = (tuple(sl.get_shape()), sl.get_dtype())
    return self

  def dtype(self) -> str:
    """The checkpoint's float dtype (numpy name); ValueError if mixed or not float."""
    kinds = {d for _, d in self.header.values()}
    bad = sorted(k for k in kinds if k not in FLOAT_DTYPES)
    if bad or len(kinds) > 1:
      name = next(n for n, (_, d) in self.header.items() if d in bad or len(kinds) > 1)
      raise ValueError(f"tensor {name}: dtypes {sorted(kinds)} in {self.hf_dir}; bdiff "
                       f"converts checkpoints of one float dtype ({sorted(FLOAT_DTYPES)})")
    return FLOAT_DTYPES[kinds.pop()] if kinds else "float32"

  def read(self, name: str, slices: tuple) -> np.ndarray:
    sl = self._handles[self._file_of[name]].get_slice(name)
    return np.asarray(sl[slices]).astype(np.float32)


class StreamWriter(contextlib.AbstractContextManager):
  """``model.safetensors`` written one tensor at a time (never the whole model in memory).

  The header (names, dtype, shapes, offsets; the ``format: pt`` metadata transformers
  expects) is known from ``specs``, the (name, shape) of every tensor, so it goes first; each
  :meth:`write` then puts one tensor's bytes at its offset. Tensors lie in name order whatever
  order they are written in, so the same tensors always give the same file. The format is
  safetensors': an 8-byte little-endian header length, the JSON header padded with spaces to
  8 bytes, the tensors' bytes back to back.
  """

  def __init__(self, out_dir: str, specs: list[tuple[str, tuple[int, ...]]], dtype):
    self.path = os.path.join(out_dir, SINGLE)
    self.dtype = np.dtype(dtype)
    header, offset, self._pending = {"__metadata__": {"format": "pt"}}, 0, {}
    for name, shape in sorted(specs):
      size = int(np.prod(shape, dtype=np.int64)) * self.dtype.itemsize
      header[name] = {"dtype": ST_DTYPES[self.dtype.name], "shape": list(shape),
                      "data_offsets": [offset, offset + size]}
      self._pending[name] = (tuple(shape), offset)
      offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    self._header = text + b" " * (-len(text) % 8)
    self._file = None

  def __enter__(self):
    self._file = open(self.path, "wb")  # pylint: disable=consider-using-with
    self._file.write(len(self._header).to_bytes(8, "little") + self._header)
    return self

  def write(self, name: str, value: np.ndarray) -> None:
    """Put one tensor of the header in place; ValueError if the header does not (or no longer)
    expect it with this shape and dtype."""
    shape, offset = self._pending.get(name, (None, 0))
    if shape != tuple(value.shape) or value.dtype != self.dtype:
      raise ValueError(f"tensor {name} {value.dtype}{list(value.shape)} is not one the header "
                       f"still expects (it has {name} {self.dtype}{list(shape or ())} "
                       f"{'unwritten' if shape else 'written or absent'})")
    del self._pending[name]
    self._file.seek(8 + len(self._header) + offset)
    self._file.write(memoryview(np.ascontiguousarray(value).view(np.uint8)))

  def __exit__(self, *exc):
    self._file.close()
    if exc[0] is None and self._pending:
      raise ValueError(f"{self.path}: {len(self._pending)} tensors of the header were never "
                       f"written, e.g. {next(iter(self._pending))}")
    return False


def write(out_dir: str, tensors: dict[str, np.ndarray]) -> str:
  """One ``model.safetensors`` holding ``tensors`` (one float dtype)."""
  dtypes = {v.dtype for v in tensors.values()}
  if len(dtypes) != 1:
    raise ValueError(f"write: tensors of one dtype, got {sorted(map(str, dtypes))}")
  with StreamWriter(out_dir, [(k, v.shape) for k, v in tensors.items()], dtypes.pop()) as w:
    for name, value in tensors.items():
      w.write(name, value)
  return w.path
