"""Tests for bdiff.data.tasks: generation, formats and exact scorers."""
import numpy as np
import pytest

from bdiff.data import tasks

ALL = sorted(tasks.TASKS)
N = 200


MANY_ANSWERS = {"shuffle", "insert_random", "remove_random", "replace_random", "latin"}


def _corruptions(prompt: str, answer: str) -> list[str]:
  """Outputs that are wrong for every task: wrong length, or a symbol that cannot appear."""
  items = answer.split(" ")
  out = ["", answer + " " + items[0], " ".join(items[:-1])]
  if len(items[0]) == 4:  # grid: changing any one cell breaks its row
    for k in range(16):
      cells = list("".join(items))
      cells[k] = str(int(cells[k]) % 4 + 1)
      out.append(" ".join("".join(cells[4 * r:4 * r + 4]) for r in range(4)))
  else:
    foreign = next(d for d in "0123456789" if d not in prompt.split(":")[1]
                   and d not in prompt.split(":")[0])
    out += [" ".join(items[:k] + [foreign] + items[k + 1:]) for k in range(len(items))]
  return out


def _swaps(answer: str) -> list[str]:
  items = answer.split(" ")
  return [" ".join(items[:k] + [items[k + 1], items[k]] + items[k + 2:])
          for k in range(len(items) - 1) if items[k] != items[k + 1]]


def test_registry():
  assert {"copy", "reverse", "sort", "shuffle", "insert_index", "insert_random",
          "remove_index", "remove_random", "replace_index", "replace_random",
          "latin", "sudoku"} == set(ALL)
  with pytest.raises(ValueError, match="unknown task"):
    tasks.get_task("nope")


@pytest.mark.parametrize("name", ALL)
def test_reference_accepted_corruptions_rejected(name):
  task = tasks.TASKS[name]
  for ex in tasks.make_examples(name, N, seed=1):
    assert task.score(ex, ex.answer), ex
    assert task.score(ex.prompt, ex.answer, strict=True), ex
    assert task.score(ex, f" {ex.answer}\nextra")  # lenient: first non-empty line
    assert not task.score(ex, f" {ex.answer}", strict=True)
    for bad in _corruptions(ex.prompt, ex.answer):
      assert not task.score(ex, bad), (ex, bad)
    for bad in [] if name in MANY_ANSWERS else _swaps(ex.answer):
      assert not task.score(ex, bad), (ex, bad)


@pytest.mark.parametrize("name", ALL)
def test_deterministic_and_short(name):
  a = tasks.make_examples(name, 50, seed=7)
  assert a == tasks.make_examples(name, 50, seed=7)
  assert a != tasks.make_examples(name, 50, seed=8)
  assert max(len(ex.prompt + ex.answer) for ex in a) <= 48
  assert all(len(ex.answer) <= tasks.TASKS[name].max_answer_len for ex in a)


def test_tasks_with_many_answers_accept_any_valid_one():
  shuffle, ins, rem, rep = (tasks.TASKS[n] for n in (
      "shuffle", "insert_random", "remove_random", "replace_random"))
  assert shuffle.score("shuffle: 1 2 2 3=", "2 3 2 1")
  assert not shuffle.score("shuffle: 1 2 2 3=", "1 2 2 3")  # must differ from the input
  assert not shuffle.score("shuffle: 1 2 2 3=", "1 2 3 3")
  assert ins.score("insert 7: 1 2 3 4=", "7 1 2 3 4") and ins.score(
      "insert 7: 1 2 3 4=", "1 2 3 4 7")
  assert not ins.score("insert 7: 1 2 3 4=", "1 2 7 4 3")
  assert rem.score("remove: 1 2 3 4 5=", "2 3 4 5") and rem.score("remove: 1 2 3 4 5=",
                                                                   "1 2 4 5")
  assert not rem.score("remove: 1 2 3 4 5=", "1 2 3")
  assert rep.score("replace 7: 1 2 3 4=", "1 7 3 4")
  assert not rep.score("replace 7: 1 2 3 4=", "1 7 7 4")
  assert tasks.TASKS["copy"].score("copy: 1 2 3 4=", "1,2, 3 4")  # lenient commas
  assert not tasks.TASKS["copy"].score("copy: 1 2 3 4=", "1,2,3,4", strict=True)


def _grid_ok(rows, boxes):
  full = set("1234")
  ok = all(set(r) == full for r in rows) and all(set(c) == full for c in zip(*rows))
  return ok and (not boxes or tasks._boxes_ok(rows))  # pylint: disable=protected-access


@pytest.mark.parametrize("name, boxes, blanks", [("latin", False, 6), ("sudoku", True, 4)])
def test_puzzles_consistent(name, boxes, blanks):
  task = tasks.TASKS[name]
  for ex in tasks.make_examples(name, N, seed=3):
    given = task.parse_prompt(ex.prompt)
    rows = ex.answer.split()
    assert _grid_ok(rows, boxes)
    assert "".join(given).count("0") == blanks
    assert all(g in ("0", s) for g, s in zip("".join(given), "".join(rows)))
  # A different valid completion is accepted; one breaking a given is not.
  latin = tasks.TASKS["latin"]
  prompt = "latin: 0000 0000 0000 1234="
  assert latin.score(prompt, "2341 3412 4123 1234") and latin.score(
      prompt, "4321 3412 2143 1234")
  assert not latin.score(prompt, "2341 3412 1234 4123")
  assert len(tasks.TASKS["sudoku"]._solutions) == 288  # pylint: disable=protected-access


def test_malformed_prompt_raises():
  with pytest.raises(ValueError, match="prompt"):
    tasks.TASKS["reverse"].score("copy: 1 2=", "2 1")
  with pytest.raises(ValueError, match="prompt"):
    tasks.TASKS["insert_index"].score("insert 7: 1 2=", "7 1 2")
  with pytest.raises(ValueError, match="prompt"):
    tasks.TASKS["sudoku"].score("latin: 0000 0000 0000 1234=", "1234 1234 1234 1234")


def test_task_documents_interleave():
  docs = tasks.task_documents(["copy", "sudoku"], 3, seed=0)
  assert len(docs) == 6 and docs[0].startswith("copy: ") and docs[1].startswith("sudoku: ")
  ex = tasks.make_examples("sudoku", 3, seed=0)[1]
  assert docs[3] == ex.prompt + ex.answer
  assert np.all([d.count("=") == 1 for d in docs])
