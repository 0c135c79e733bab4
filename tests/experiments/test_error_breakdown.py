"""experiments/error_breakdown.py: the split by list length and repeated items (no model)."""
import pytest

from bdiff.data import tasks as tasks_lib
from experiments import error_breakdown

REVERSE = tasks_lib.get_task("reverse")


def ex(items: str) -> tasks_lib.Example:
  return tasks_lib.Example(f"reverse: {items}=", " ".join(items.split()[::-1]))


def test_rows_split_distinct_from_repeated_items_by_length():
  examples = [ex("1 2 3 4"), ex("5 6 7 8"), ex("1 1 2 3"), ex("1 2 3 4 5")]
  outputs = ["4 3 2 1", "5 6 7 8", "3 2 1 1", "1 2 3 4"]  # right, echo, right, wrong
  rows = {(r["items"], r["length"]): r for r in error_breakdown.breakdown(REVERSE, examples,
                                                                           outputs)}
  assert rows["all", "all"]["n"] == 4 and rows["all", "all"]["correct"] == 2
  assert rows["all", "all"]["echo"] == "50 %"  # one of the two wrong answers is the input
  assert (rows["distinct", "all"]["n"], rows["distinct", "all"]["correct"]) == (3, 1)
  assert (rows["distinct", 4]["n"], rows["distinct", 4]["echo"]) == (2, "100 %")
  assert rows["distinct", 5]["echo"] == "0 %"
  assert rows["repeats", 4]["accuracy"] == 100.0 and rows["repeats", 4]["echo"] == "-"
  assert ("repeats", 5) not in rows


def test_outputs_must_pair_with_examples():
  with pytest.raises(ValueError):
    error_breakdown.breakdown(REVERSE, [ex("1 2 3 4")], [])

