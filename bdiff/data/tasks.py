"""Synthetic tasks with exact scorers, in the style of ParallelBench's list and grid tasks.

Formats are compact so a tiny byte-level model can learn them on a CPU:

  copy: 3 1 4 1=            ->  3 1 4 1
  insert 7 at 2: 3 1 4 1=   ->  3 1 7 4 1
  replace 7: 3 1 4 1=       ->  any one item replaced by 7
  sudoku: 0042 1300 0014 4200=  ->  3142 1423 2314 4231

List items are digits (with repeats); `word` is always a digit absent from the list and
indices are 0-based. The prompt alone determines what is correct, so scorers take either an
`Example` or its prompt. Tasks with many valid outputs (shuffle, *_random, latin_square) are
scored by checking validity, never by equality with the stored reference answer.

Scoring modes: lenient reads the first non-empty line as items separated by
whitespace or commas; strict requires the output to be exactly the canonical rendering.
"""
from __future__ import annotations

import dataclasses
import functools
import itertools
import re
import zlib
from typing import Callable, Sequence

import numpy as np

_DIGITS = tuple("0123456789")
ANSWER_SEPARATOR = "="  # every prompt ends with it; the answer follows
_LIST_PROMPT = re.compile(r"^(\w+)(?: (\d))?(?: at (\d+))?: ([\d ]*)=$")
_GRID_PROMPT = re.compile(r"^(\w+): ([0-4]{4}) ([0-4]{4}) ([0-4]{4}) ([0-4]{4})=$")


@dataclasses.dataclass(frozen=True)
class Example:
  """One task instance: the model sees `prompt` and must produce `answer` (or any valid one)."""
  prompt: str
  answer: str


def _prompt_of(example_or_prompt: Example | str) -> str:
  if isinstance(example_or_prompt, Example):
    return example_or_prompt.prompt
  return example_or_prompt


def _output_items(output: str, strict: bool) -> list[str] | None:
  """Items of a model output, or None if it cannot be parsed (strict: canonical form only)."""
  if strict:
    items = output.split(" ")
    return items if all(items) and output == output.strip() else None
  lines = [ln for ln in output.splitlines() if ln.strip()]
  return lines[0].replace(",", " ").split() if lines else []


# List operations: op(items, word, pos) -> new list.
def _insert(x: list[str], w: str, i: int) -> list[str]:
  return x[:i] + [w] + x[i:]


def _remove(x: list[str], w: str, i: int) -> list[str]:
  del w
  return x[:i] + x[i + 1:]


def _replace(x: list[str], w: str, i: int) -> list[str]:
  return x[:i] + [w] + x[i + 1:]


ListOp = Callable[[list[str], str, int], list[str]]


class ListTask:
  """A list task: `verb [word] [at index]: items=` -> items after the operation.

  Args:
    name: registry name.
    verb: first word of the prompt.
    op: op(items, word, pos) -> result; pos ranges over len(items) (+1 if `insert`).
    word: whether the prompt carries a new item.
    index: None (op ignores pos), "shown" (pos is in the prompt; exact match) or "hidden"
      (any pos is accepted).
    min_len, max_len: list length range (inclusive).
  """

  def __init__(self, name: str, verb: str, op: ListOp, *, word: bool = False,
               index: str | None = None, min_len: int = 4, max_len: int = 8):
    if index not in (None, "shown", "hidden"):
      raise ValueError(f"index must be None, 'shown' or 'hidden', got {index!r}")
    self.name, self.verb, self.op = name, verb, op
    self.word, self.index = word, index
    self.min_len, self.max_len = min_len, max_len
    self._extra_pos = int(op is _insert)
    self.max_answer_len = 2 * (max_len + self._extra_pos) - 1

  def _prompt(self, items: list[str], word: str | None, pos: int | None) -> str:
    head = self.verb + (f" {word}" if self.word else "")
    head += f" at {pos}" if self.index == "shown" else ""
    return f"{head}: {' '.join(items)}="

  def _reference(self, items: list[str], word: str, pos: int,
                 rng: np.random.Generator) -> list[str]:
    del rng
    return self.op(items, word, pos)

  def generate(self, rng: np.random.Generator) -> Example:
    """Draws one example from `rng`."""
    n = int(rng.integers(self.min_len, self.max_len + 1))
    items = [_DIGITS[i] for i in rng.integers(0, 10, size=n)]
    absent = [d for d in _DIGITS if d not in items]
    word = absent[int(rng.integers(len(absent)))]
    pos = int(rng.integers(n + self._extra_pos))
    answer = self._reference(items, word, pos, rng)
    return Example(self._prompt(items, word if self.word else None, pos), " ".join(answer))

  def parse_prompt(self, prompt: str) -> tuple[list[str], str, int | None]:
    """(items, word, shown index) of a prompt of this task; ValueError if malformed."""
    m = _LIST_PROMPT.match(prompt)
    if (m is None or m[1] != self.verb or (m[2] is None) == self.word
        or (m[3] is None) == (self.index == "shown")):
      raise ValueError(f"prompt {prompt!r} is not a {self.name!r} prompt")
    return m[4].split(), m[2] or "", None if m[3] is None else int(m[3])

  def _is_correct(self, items: list[str], word: str, pos: int | None,
                  pred: list[str]) -> bool:
    if self.index == "hidden":
      return any(self.op(items, word, p) == pred
                 for p in range(len(items) + self._extra_pos))
    return self.op(items, word, pos or 0) == pred

  def score(self, example_or_prompt: Example | str, output: str, *,
            strict: bool = False) -> bool:
    """Whether `output` is a correct answer to the prompt."""
    items, word, pos = self.parse_prompt(_prompt_of(example_or_prompt))
    pred = _output_items(output, strict)
    return pred is not None and self._is_correct(items, word, pos, pred)


class ShuffleTask(ListTask):
  """Any reordering of the input multiset that differs from the input order (many answers)."""

  def __init__(self, name: str = "shuffle", **kw):
    super().__init__(name, "shuffle", lambda x, w, i: list(x), **kw)

  def generate(self, rng: np.random.Generator) -> Example:
    while True:  # An all-equal list has no valid answer; redraw (rare).
      ex = super().generate(rng)
      if ex.answer.split() != self.parse_prompt(ex.prompt)[0]:
        return ex

  def _reference(self, items: list[str], word: str, pos: int,
                 rng: np.random.Generator) -> list[str]:
    if len(set(items)) < 2:
      return list(items)  # Rejected by generate().
    while True:
      perm = [items[i] for i in rng.permutation(len(items))]
      if perm != items:
        return perm

  def _is_correct(self, items: list[str], word: str, pos: int | None,
                  pred: list[str]) -> bool:
    return sorted(pred) == sorted(items) and pred != items


@functools.lru_cache(maxsize=1)
def _latin_squares() -> tuple[tuple[str, ...], ...]:
  """All 576 4x4 Latin squares over "1234", rows as strings."""
  perms = ["".join(p) for p in itertools.permutations("1234")]
  squares = [()]
  for _ in range(4):
    squares = [sq + (r,) for sq in squares for r in perms
               if all(r[c] != row[c] for row in sq for c in range(4))]
  return tuple(squares)


def _boxes_ok(rows: Sequence[str]) -> bool:
  return all(set(rows[r][c:c + 2] + rows[r + 1][c:c + 2]) == set("1234")
             for r in (0, 2) for c in (0, 2))


class GridTask:
  """Complete a 4x4 grid (0 = blank) into a Latin square, optionally with 2x2 boxes (sudoku).

  Any completion that is valid and keeps the givens is correct.

  Args:
    name: registry name, also the prompt verb.
    boxes: also require each 2x2 box to hold 1-4 (sudoku).
    blanks: number of blank cells per puzzle.
  """

  max_answer_len = 19

  def __init__(self, name: str, *, boxes: bool, blanks: int):
    if not 1 <= blanks <= 16:
      raise ValueError(f"blanks must be in [1, 16], got {blanks}")
    self.name, self.boxes, self.blanks = name, boxes, blanks

  @functools.cached_property
  def _solutions(self) -> tuple[tuple[str, ...], ...]:
    return tuple(s for s in _latin_squares() if not self.boxes or _boxes_ok(s))

  def generate(self, rng: np.random.Generator) -> Example:
    """Draws one example from `rng`."""
    rows = self._solutions[int(rng.integers(len(self._solutions)))]
    cells = list("".join(rows))
    for k in rng.choice(16, size=self.blanks, replace=False):
      cells[k] = "0"
    given = " ".join("".join(cells[4 * r:4 * r + 4]) for r in range(4))
    return Example(f"{self.name}: {given}=", " ".join(rows))

  def parse_prompt(self, prompt: str) -> list[str]:
    """The four given rows (0 = blank); ValueError if malformed."""
    m = _GRID_PROMPT.match(prompt)
    if m is None or m[1] != self.name:
      raise ValueError(f"prompt {prompt!r} is not a {self.name!r} prompt")
    return [m[i] for i in range(2, 6)]

  def score(self, example_or_prompt: Example | str, output: str, *,
            strict: bool = False) -> bool:
    """Whether `output` is a valid completion consistent with the givens."""
    given = self.parse_prompt(_prompt_of(example_or_prompt))
    rows = _output_items(output, strict)
    if rows is None:
      return False
    if not strict:  # Lenient: ignore tokens that are not 4-digit rows.
      rows = [r for r in rows if re.fullmatch(r"\d{4}", r)]
    if len(rows) != 4 or not all(re.fullmatch(r"[1-4]{4}", r) for r in rows):
      return False
    full = set("1234")
    valid = (all(set(r) == full for r in rows)
             and all(set(col) == full for col in zip(*rows))
             and (not self.boxes or _boxes_ok(rows)))
    keeps = all(g in ("0", p) for gr, pr in zip(given, rows) for g, p in zip(gr, pr))
    return valid and keeps


Task = ListTask | GridTask

TASKS: dict[str, Task] = {t.name: t for t in (
    ListTask("copy", "copy", lambda x, w, i: list(x)),
    ListTask("reverse", "reverse", lambda x, w, i: x[::-1]),
    ListTask("sort", "sort", lambda x, w, i: sorted(x)),
    ShuffleTask(),
    ListTask("insert_index", "insert", _insert, word=True, index="shown"),
    ListTask("insert_random", "insert", _insert, word=True, index="hidden"),
    ListTask("remove_index", "remove", _remove, index="shown", min_len=5, max_len=8),
    ListTask("remove_random", "remove", _remove, index="hidden", min_len=5, max_len=8),
    ListTask("replace_index", "replace", _replace, word=True, index="shown"),
    ListTask("replace_random", "replace", _replace, word=True, index="hidden"),
    GridTask("latin", boxes=False, blanks=6),
    GridTask("sudoku", boxes=True, blanks=4),
)}


def get_task(task: str | Task) -> Task:
  """The task object for a registry name (or the object itself)."""
  if not isinstance(task, str):
    return task
  if task not in TASKS:
    raise ValueError(f"unknown task {task!r}; known: {sorted(TASKS)}")
  return TASKS[task]


def make_examples(task: str | Task, n: int, seed: int) -> list[Example]:
  """`n` examples of `task`, a deterministic function of (task name, n, seed)."""
  task = get_task(task)
  if n < 0:
    raise ValueError(f"n must be >= 0, got {n}")
  # The name enters the seed so that tasks drawn with one seed are independent.
  rng = np.random.default_rng([seed, zlib.crc32(task.name.encode())])
  return [task.generate(rng) for _ in range(n)]


def task_documents(task_names: Sequence[str], n_per_task: int, seed: int) -> list[str]:
  """Training texts `prompt + answer`, interleaving the tasks example by example."""
  per_task = [make_examples(name, n_per_task, seed) for name in task_names]
  return [ex.prompt + ex.answer for group in zip(*per_task) for ex in group]
