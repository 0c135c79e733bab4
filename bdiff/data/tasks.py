"""Synthetic tasks with exact scorers, after ParallelBench (Kim et al. 2025, arXiv 2510.04767).

The compact formats let a tiny byte-level model learn them on a CPU:

  copy: 3 1 4 1=            ->  3 1 4 1
  insert 7 at 2: 3 1 4 1=   ->  3 1 7 4 1
  replace 7: 3 1 4 1=       ->  any one item replaced by 7
  sudoku: 0042 1300 0014 4200=  ->  3142 1423 2314 4231
  latin_square: H 4 C A=    ->  any Latin square over H, 4, C, A (rows as words)

The benchmark's own waiting-line format (``names_*``: 3-6 distinct "First Last" names;
``names15_*``: 15 names) keeps its list strings and its lenient/strict list parsing:

  names_insert_index: insert "Eve Park" at 1: ["Ada Lee", "Ben Fox"]=
                            ->  ["Ada Lee", "Eve Park", "Ben Fox"]

List items are digits (with repeats); `word` is always a digit absent from the list and
indices are 0-based. The prompt alone determines what is correct, so scorers take either an
`Example` or its prompt. Tasks with many valid outputs (shuffle, *_random, latin_square) are
scored by checking validity, never by equality with the stored reference answer.

Scoring modes (compact formats): lenient reads the first non-empty line as items separated by
whitespace or commas; strict requires the output to be exactly the canonical rendering. The
name formats parse as the benchmark does (:class:`NameItems`).
"""
from __future__ import annotations

import dataclasses
import functools
import itertools
import re
import zlib
from typing import Callable, Collection, Sequence

import numpy as np

_DIGITS = tuple("0123456789")
ANSWER_SEPARATOR = "="  # every prompt ends with it; the answer follows
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


class DigitItems:
  """List items are digits with repeats, written ``3 1 4 1``; the new word is an absent digit."""

  word_pattern, list_pattern = r"(\d)", r"([\d ]*)"

  def draw(self, rng: np.random.Generator, n: int) -> tuple[list[str], str]:
    """`n` items and a word absent from them."""
    items = [_DIGITS[i] for i in rng.integers(0, 10, size=n)]
    absent = [d for d in _DIGITS if d not in items]
    return items, absent[int(rng.integers(len(absent)))]

  def render(self, items: Sequence[str]) -> str:
    return " ".join(items)

  def render_word(self, word: str) -> str:
    return word

  def parse(self, text: str) -> list[str]:
    return text.split()

  def output_items(self, output: str, strict: bool) -> list[str] | None:
    return _output_items(output, strict)

  def max_answer_len(self, n: int) -> int:
    return 2 * n - 1


# ParallelBench's waiting-line items are "First Last" names (the product of 92 first and 192
# last names); this built-in stand-in keeps the format with shorter lists, no download.
_FIRST_NAMES = ("Ada", "Ben", "Cara", "Dan", "Eli", "Faye", "Gus", "Hana", "Ivan", "Jill",
                "Kai", "Lena", "Max", "Nina", "Omar", "Pia", "Quinn", "Rosa", "Sam", "Tara",
                "Uma", "Vic", "Wes", "Xena", "Yuri", "Zoe", "Abe", "Bea", "Cole", "Dora",
                "Emil", "Flo")
_LAST_NAMES = ("Adams", "Baker", "Clark", "Diaz", "Evans", "Fox", "Gray", "Hill", "Ito",
               "Jones", "King", "Lee", "Moore", "Nash", "Ortiz", "Park", "Quan", "Reed",
               "Shaw", "Tran", "Ueda", "Vega", "Wong", "Xu", "Young", "Zhao", "Bell", "Cruz",
               "Dunn", "Ford", "Green", "Hart")
NAMES = tuple(f"{f} {l}" for f in _FIRST_NAMES for l in _LAST_NAMES)


class NameItems:
  """ParallelBench's waiting-line format: distinct names in a list string ``["A B", "C D"]``.

  Items are drawn without replacement (so they are unique) and the word is a name not in the
  list. Output parsing is the benchmark's (Kim et al. 2025, arXiv 2510.04767;
  furiosa-ai/ParallelBench): lenient takes the text after the last ``[`` up to the next ``]``,
  splits it on commas and strips spaces and double quotes from each item, dropping empty
  ones; strict needs ``[`` and ``]`` and every ``", "``-separated item wrapped in double
  quotes with no other quote inside.
  """

  word_pattern, list_pattern = r'"([^"]+)"', r"(\[.*\])"

  def draw(self, rng: np.random.Generator, n: int) -> tuple[list[str], str]:
    """`n` distinct names and one more that is not among them."""
    picked = [NAMES[i] for i in rng.choice(len(NAMES), size=n + 1, replace=False)]
    return picked[:n], picked[n]

  def render(self, items: Sequence[str]) -> str:
    return "[" + ", ".join(f'"{x}"' for x in items) + "]"

  def render_word(self, word: str) -> str:
    return f'"{word}"'

  def parse(self, text: str) -> list[str]:
    return re.findall(r'"([^"]*)"', text)

  def output_items(self, output: str, strict: bool) -> list[str] | None:
    if strict:
      if "[" not in output or "]" not in output:
        return None
      inner = output[output.index("[") + 1:output.index("]", output.index("["))]
      items = inner.split(", ")
      ok = all(len(x) >= 2 and x[0] == x[-1] == '"' and '"' not in x[1:-1] for x in items)
      return [x[1:-1] for x in items] if ok and inner else None
    inner = output.rsplit("[", 1)[-1].split("]", 1)[0]
    return [x for x in (y.strip().strip('"').strip() for y in inner.split(",")) if x]

  def max_answer_len(self, n: int) -> int:
    return 2 + n * (max(map(len, NAMES)) + 4) - 2


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
    items: the item format, :class:`DigitItems` (default) or :class:`NameItems`.
  """

  def __init__(self, name: str, verb: str, op: ListOp, *, word: bool = False,
               index: str | None = None, min_len: int = 4, max_len: int = 8,
               items: DigitItems | NameItems | None = None):
    if index not in (None, "shown", "hidden"):
      raise ValueError(f"index must be None, 'shown' or 'hidden', got {index!r}")
    if not 1 <= min_len <= max_len:
      raise ValueError(f"need 1 <= min_len <= max_len, got min_len={min_len}, "
                       f"max_len={max_len}")
    self.name, self.verb, self.op = name, verb, op
    self.word, self.index = word, index
    self.min_len, self.max_len = min_len, max_len
    self.items = items or DigitItems()
    # Many valid answers: the tasks where parallel decoding is expected to collapse.
    self.many_answers = index == "hidden"
    self._extra_pos = int(op is _insert)
    self.max_answer_len = self.items.max_answer_len(max_len + self._extra_pos)
    self._prompt_re = re.compile(rf"^(\w+)(?: {self.items.word_pattern})?(?: at (\d+))?: "
                                 rf"{self.items.list_pattern}=$")

  def _prompt(self, items: list[str], word: str | None, pos: int | None) -> str:
    head = self.verb + (f" {self.items.render_word(word)}" if self.word else "")
    head += f" at {pos}" if self.index == "shown" else ""
    return f"{head}: {self.items.render(items)}="

  def _reference(self, items: list[str], word: str, pos: int,
                 rng: np.random.Generator) -> list[str]:
    del rng
    return self.op(items, word, pos)

  def generate(self, rng: np.random.Generator) -> Example:
    """Draws one example from `rng`."""
    n = int(rng.integers(self.min_len, self.max_len + 1))
    items, word = self.items.draw(rng, n)
    pos = int(rng.integers(n + self._extra_pos))
    answer = self._reference(items, word, pos, rng)
    return Example(self._prompt(items, word if self.word else None, pos),
                   self.items.render(answer))

  def parse_prompt(self, prompt: str) -> tuple[list[str], str, int | None]:
    """(items, word, shown index) of a prompt of this task; ValueError if malformed."""
    m = self._prompt_re.match(prompt)
    if (m is None or m[1] != self.verb or (m[2] is None) == self.word
        or (m[3] is None) == (self.index == "shown")):
      raise ValueError(f"prompt {prompt!r} is not a {self.name!r} prompt")
    return self.items.parse(m[4]), m[2] or "", None if m[3] is None else int(m[3])

  def _is_correct(self, items: list[str], word: str, pos: int | None,
                  pred: list[str]) -> bool:
    # With the word absent from the list, "some position gives `pred`" is the benchmark's
    # metric for insert/remove/replace_random (e.g. replace_random: same length, and putting
    # the word into the input at its first occurrence in `pred` yields `pred`).
    if self.index == "hidden":
      return any(self.op(items, word, p) == pred
                 for p in range(len(items) + self._extra_pos))
    return self.op(items, word, pos or 0) == pred

  def score(self, example_or_prompt: Example | str, output: str, *,
            strict: bool = False) -> bool:
    """Whether `output` is a correct answer to the prompt."""
    items, word, pos = self.parse_prompt(_prompt_of(example_or_prompt))
    pred = self.items.output_items(output, strict)
    return pred is not None and self._is_correct(items, word, pos, pred)


class ShuffleTask(ListTask):
  """Any reordering of the input multiset that differs from the input order (many answers)."""

  def __init__(self, name: str = "shuffle", **kw):
    super().__init__(name, "shuffle", lambda x, w, i: list(x), **kw)
    self.many_answers = True

  def generate(self, rng: np.random.Generator) -> Example:
    while True:  # An all-equal list has no valid answer; redraw (rare).
      ex = super().generate(rng)
      if self.items.parse(ex.answer) != self.parse_prompt(ex.prompt)[0]:
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
    self.many_answers = not boxes  # a Latin square with blanks often has several completions

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


_SQUARE_SYMBOLS = tuple("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
_SQUARE_PROMPT = re.compile(r"^(\w+): ((?:\w )*\w)=$")


class LatinSquareTask:
  """Write any n x n Latin square over n given symbols (ParallelBench ``latin_square_n4``).

  ParallelBench (Kim et al. 2025, arXiv 2510.04767; furiosa-ai/ParallelBench) draws n symbols
  without replacement from A-Z and 0-9 and accepts any Latin square over them, so the task has
  many valid outputs (576 for n = 4) and its tokens depend strongly on each other. Compact
  form here: ``square: H 4 C A=`` -> ``H4CA 4CAH CAH4 AH4C`` (rows as words). The reference is
  the benchmark's: the cyclic square with its rows and columns shuffled.

  Lenient scoring follows the benchmark's metric: keep the items (rows) whose set of symbols
  equals the symbol set, need at least n, take the first n, and require every row and every
  column (zip of the rows, truncated to the shortest) to hold exactly the symbol set. Strict:
  exactly n rows of exactly n symbols in the canonical rendering, forming a Latin square.
  """

  def __init__(self, name: str = "latin_square", *, n: int = 4):
    if not 2 <= n <= 9:
      raise ValueError(f"n must be in [2, 9], got {n}")
    self.name, self.n = name, n
    self.many_answers = True
    self.max_answer_len = n * (n + 1) - 1

  def generate(self, rng: np.random.Generator) -> Example:
    """Draws one example from `rng`."""
    sym = [_SQUARE_SYMBOLS[i] for i in rng.choice(len(_SQUARE_SYMBOLS), self.n, replace=False)]
    rows = [[sym[(r + c) % self.n] for c in range(self.n)] for r in range(self.n)]
    rows = [rows[r] for r in rng.permutation(self.n)]
    cols = rng.permutation(self.n)
    answer = " ".join("".join(row[c] for c in cols) for row in rows)
    return Example(f"{self.name}: {' '.join(sym)}=", answer)

  def parse_prompt(self, prompt: str) -> list[str]:
    """The n symbols of a prompt; ValueError if malformed."""
    m = _SQUARE_PROMPT.match(prompt)
    sym = m[2].split(" ") if m else []
    if m is None or m[1] != self.name or len(sym) != self.n or len(set(sym)) != self.n:
      raise ValueError(f"prompt {prompt!r} is not a {self.name!r} prompt with {self.n} "
                       "distinct symbols")
    return sym

  def score(self, example_or_prompt: Example | str, output: str, *,
            strict: bool = False) -> bool:
    """Whether `output` is a Latin square over the prompt's symbols."""
    sym = set(self.parse_prompt(_prompt_of(example_or_prompt)))
    rows = _output_items(output, strict)
    if rows is None:
      return False
    if strict:
      if len(rows) != self.n or any(len(r) != self.n for r in rows):
        return False
    else:
      rows = [r for r in rows if set(r) == sym][:self.n]
      if len(rows) < self.n:
        return False
    return all(set(r) == sym for r in rows) and all(set(c) == sym for c in zip(*rows))


Task = ListTask | GridTask | LatinSquareTask


def _by_last_name(names: list[str]) -> list[str]:
  return sorted(names, key=lambda n: (n.split(" ")[-1], n))


def waiting_line_tasks(prefix: str, min_len: int, max_len: int) -> list[ListTask]:
  """ParallelBench's ten waiting-line tasks over names (Kim et al. 2025, arXiv 2510.04767).

  `sort` keeps the benchmark's reference, a plain string sort of "First Last" (so by first
  name, although the benchmark's prompt asks for last-name order); `sort_by_last_name` is the
  corrected task (ties broken by the whole name), reported under its own name.
  """
  kw = dict(min_len=min_len, max_len=max_len, items=NameItems())
  return [
      ListTask(f"{prefix}copy", "copy", lambda x, w, i: list(x), **kw),
      ListTask(f"{prefix}reverse", "reverse", lambda x, w, i: x[::-1], **kw),
      ListTask(f"{prefix}sort", "sort", lambda x, w, i: sorted(x), **kw),
      ListTask(f"{prefix}sort_by_last_name", "sort_by_last_name",
               lambda x, w, i: _by_last_name(x), **kw),
      ShuffleTask(f"{prefix}shuffle", **kw),
      ListTask(f"{prefix}insert_index", "insert", _insert, word=True, index="shown", **kw),
      ListTask(f"{prefix}insert_random", "insert", _insert, word=True, index="hidden", **kw),
      ListTask(f"{prefix}remove_index", "remove", _remove, index="shown", **kw),
      ListTask(f"{prefix}remove_random", "remove", _remove, index="hidden", **kw),
      ListTask(f"{prefix}replace_index", "replace", _replace, word=True, index="shown", **kw),
      ListTask(f"{prefix}replace_random", "replace", _replace, word=True, index="hidden",
               **kw),
  ]


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
    LatinSquareTask(),
    # The benchmark's waiting-line lists hold 3-6 names; its `waiting_line_n15` variant 15.
    *waiting_line_tasks("names_", 3, 6),
    *waiting_line_tasks("names15_", 15, 15),
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


def held_out_examples(task: str | Task, n: int, seed: int,
                      seen: Collection[str] = ()) -> list[Example]:
  """The first `n` examples of `task`'s stream for `seed` whose prompts are not in `seen`.

  `seen` is a run's training prompts (`bdiff.data.training_prompts`): with short lists most
  prompts recur across independent draws (a 4-digit list has 10^4 values), so an evaluation
  drawn with another seed still meets ~8 % of its prompts in training. Skipping them keeps the
  set deterministic (the stream is `make_examples`') and held out in fact, not only by seed.
  """
  task = get_task(task)
  drawn = n
  while True:
    kept = [ex for ex in make_examples(task, drawn, seed) if ex.prompt not in seen]
    if len(kept) >= n:
      return kept[:n]
    if drawn >= 64 * n:
      raise ValueError(f"task {task.name!r}: only {len(kept)} of {drawn} examples drawn with "
                       f"seed {seed} have prompts unseen in training, fewer than the {n} "
                       "asked for; lower eval.num_examples")
    drawn *= 2


def task_documents(task_names: Sequence[str], n_per_task: int, seed: int) -> list[str]:
  """Training texts `prompt + answer`, interleaving the tasks example by example."""
  per_task = [make_examples(name, n_per_task, seed) for name in task_names]
  return [ex.prompt + ex.answer for group in zip(*per_task) for ex in group]
