"""The CLI entry points ``bdiff sample | eval | bench`` on a stand-in run.

``restore_params`` is replaced by random weights of a tiny model: these tests check plumbing
(records, tables, files), not accuracy, and skip a training run. The quickstart notebook test
covers the real train -> restore -> sample path.
"""
import json

import pytest

from bdiff.config import base_config
from bdiff.data import ByteTokenizer
from bdiff.eval import speed_bench, stats
from bdiff.eval import tasks as eval_tasks
from bdiff import runs as run


def tiny_cfg():
  cfg = base_config()
  cfg.model.update(d_model=32, n_layers=2, n_heads=2, n_kv_heads=1, head_dim=16, mlp_dim=64,
                   dtype="float32")
  cfg.diffusion.block_size = 4
  cfg.sample.update(max_new_tokens=8, batch_size=4)
  cfg.eval.update(num_examples=4, batch_size=4)
  return cfg


@pytest.fixture(scope="module")
def params():
  return speed_bench.random_params(tiny_cfg().model)


@pytest.fixture
def workdir(tmp_path, monkeypatch, params):
  def restore(path, cfg=None, **kw):
    del kw
    assert path == str(tmp_path)
    return (cfg if cfg is not None else tiny_cfg()), params, ByteTokenizer()

  monkeypatch.setattr(run, "restore_params", restore)
  monkeypatch.setattr(run, "run_config", lambda path: tiny_cfg())
  return str(tmp_path)


def test_sample_file_writes_one_record_per_prompt(workdir, tmp_path):
  prompts = tmp_path / "prompts.jsonl"
  prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ["def f(", "x = ", "#"]))
  out = tmp_path / "out.jsonl"
  run.sample_file(None, workdir, str(prompts), str(out))
  recs = [json.loads(line) for line in out.read_text().splitlines()]
  assert [r["prompt"] for r in recs] == ["def f(", "x = ", "#"]
  for r in recs:
    assert {"tokens", "text", "num_forwards", "seconds"} <= set(r)
    assert 1 <= len(r["tokens"]) <= 8


def test_eval_prints_a_table_per_task(workdir, capsys):
  rows = eval_tasks.main(tiny_cfg(), workdir, "copy,sort")
  assert [r["task"] for r in rows] == ["copy", "sort"]
  for r in rows:
    assert r["n"] == 4 and 0 <= r["accuracy"] <= 100 and r["tok/fwd"] > 0 and r["tok/s"] > 0
    lo, hi = (float(x) for x in r["ci95"].strip("[]").split(","))
    assert lo <= r["accuracy"] <= hi
  table = capsys.readouterr().out
  assert "| copy | 4 |" in table and "tok/s" in table and "| ci95 |" in table
  assert "| all | 8 |" in table  # pooled row over both tasks
  logged = [json.loads(x) for x in open(f"{workdir}/eval_tasks.jsonl", encoding="utf-8")]
  assert [x["task"] for x in logged] == ["copy", "sort"]
  assert logged[0]["sample"]["strategy"] == "threshold"


def test_correct_answers_score_full_marks(params):
  """Scoring reads the decoded text: feeding the reference answers back gives 100%."""
  class Oracle(run.Sampler):
    def sample(self, texts, **kw):
      answers = {ex.prompt: ex.answer for ex in eval_tasks.tasks_lib.make_examples("sort", 4, 1)}
      return [dict(text=answers[t], num_tokens=3, num_forwards=1, seconds=1.0) for t in texts]

  row = eval_tasks.evaluate_task(Oracle(tiny_cfg(), params, ByteTokenizer()), "sort", 4, 1, 4)
  assert row["accuracy"] == 100.0 and row["strict"] == 100.0


def test_eval_skips_the_prompts_its_run_trained_on(params):
  """A task-suite run's evaluation is held out: drawn with the training seed itself (the worst
  case), it must still score no prompt the run trained on."""
  cfg = tiny_cfg()
  cfg.data.update(source="tasks", tasks="sort", num_task_examples=6)
  cfg.train.seed = 1
  asked = []

  class Recorder(run.Sampler):
    def sample(self, texts, **kw):
      asked.extend(texts)
      return [dict(text="", num_tokens=1, num_forwards=1, seconds=1.0) for _ in texts]

  rows = eval_tasks.evaluate(Recorder(cfg, params, ByteTokenizer()), ["sort", "copy"], 4, 1, 4)
  trained = {ex.prompt for ex in eval_tasks.tasks_lib.make_examples("sort", 6, 1)}
  assert [r["n"] for r in rows] == [4, 4] and len(asked) == 8
  assert not trained & set(asked[:4])
  # copy was not trained on: its examples are the plain stream for the seed.
  assert asked[4:] == [ex.prompt for ex in eval_tasks.tasks_lib.make_examples("copy", 4, 1)]


def test_pool_sums_counts_and_recomputes_the_interval():
  rows = [eval_tasks._summary("a", 3, 2, 4, tokens=12, forwards=6, seconds=1.0),
          eval_tasks._summary("b", 1, 1, 4, tokens=8, forwards=4, seconds=1.0)]
  pooled = eval_tasks.pool(rows)
  assert pooled["n"] == 8 and pooled["correct"] == 4 and pooled["accuracy"] == 50.0
  assert pooled["strict"] == 37.5 and pooled["tok/fwd"] == 2.0 and pooled["nfe"] == 1.25
  assert pooled["ci95"] == stats.accuracy_summary(4, 8)["ci95"]


def test_bench_reports_overhead(workdir, capsys):
  cfg = tiny_cfg()
  cfg.sample.batch_size = 1
  rows = speed_bench.main(cfg, workdir)
  assert [r["batch"] for r in rows] == [1]
  assert rows[0]["tok/s"] > 0 and rows[0]["overhead"] > 0 and rows[0]["compile s"] > 0
  assert "overhead" in capsys.readouterr().out
  assert json.load(open(f"{workdir}/bench.json", encoding="utf-8"))["machine"]


class _Oracle(run.Sampler):
  """Answers every prompt with its reference answer (scoring sees exact text)."""

  def sample(self, texts, **kw):
    answers = {ex.prompt: ex.answer for name in ("names_copy", "names15_shuffle")
               for ex in eval_tasks.tasks_lib.make_examples(name, 4, 1)}
    return [dict(text=answers[t], num_tokens=3, num_forwards=1, seconds=1.0) for t in texts]


@pytest.mark.parametrize("name", ["names_copy", "names15_shuffle"])
def test_names_tasks_score_through_eval_and_warn_when_answers_cannot_fit(
    params, name, caplog):
  cfg = tiny_cfg()
  row = eval_tasks.evaluate_task(_Oracle(cfg, params, ByteTokenizer()), name, 4, 1, 4)
  assert row["accuracy"] == 100.0 and row["strict"] == 100.0
  assert f"task {name}: reference answers take up to" in caplog.text  # 8 new tokens
  caplog.clear()
  cfg.sample.max_new_tokens = 256
  eval_tasks.evaluate_task(_Oracle(cfg, params, ByteTokenizer()), name, 4, 1, 4)
  assert "reference answers take up to" not in caplog.text
