"""Tests for bdiff.data.pipeline: config validation and build_data for every source."""
import numpy as np
import pytest

from bdiff.data import pipeline, store, tasks
from bdiff.data.tokenizers import ByteTokenizer


def _cfg(**overrides):
  cfg = pipeline.default_data_config()
  cfg.update(overrides)
  return cfg


def _build(cfg, seq_len=32, batch=4, seed=0):
  return pipeline.build_data(cfg, seq_len, batch, seed, process_index=0, process_count=1)


def test_defaults():
  cfg = pipeline.default_data_config()
  assert (cfg.source, cfg.tokenizer, cfg.tasks, cfg.num_task_examples, cfg.max_docs,
          cfg.path, cfg.valid_fraction) == ("stdlib", "bytes", "copy,reverse,sort", 2000, 0,
                                            "", 0.02)
  pipeline.validate_data_config(cfg)
  assert pipeline.task_names(" copy, sort ,") == ["copy", "sort"]
  assert pipeline.task_names(["latin"]) == ["latin"]


@pytest.mark.parametrize("overrides, message", [
    ({"source": "web"}, "data.source must be one of"),
    ({"source": "tasks", "tasks": "copy,frobnicate"}, "data.tasks: unknown task"),
    ({"source": "tasks", "tasks": ""}, "data.tasks"),
    ({"source": "tasks", "num_task_examples": 0}, "data.num_task_examples"),
    ({"source": "text"}, "data.path is required"),
    ({"source": "tensorstore", "path": "/nonexistent"}, "data.path"),
    ({"tokenizer": "missing.json"}, "data.tokenizer"),
    ({"valid_fraction": 0.0}, "data.valid_fraction"),
    ({"max_docs": -2}, "data.max_docs"),
])
def test_validation_names_the_key(overrides, message):
  with pytest.raises(ValueError, match=message):
    pipeline.validate_data_config(_cfg(**overrides))


def test_validation_rejects_missing_and_unknown_keys():
  cfg = _cfg()
  cfg.typo_field = 1
  with pytest.raises(ValueError, match="data.typo_field is not a known key"):
    pipeline.validate_data_config(cfg)
  cfg = pipeline.default_data_config().to_dict()
  del cfg["path"]
  with pytest.raises(ValueError, match="data.path is missing"):
    pipeline.validate_data_config(pipeline.ml_collections.ConfigDict(cfg))


def test_stdlib_source():
  bundle = _build(_cfg(max_docs=5))
  assert isinstance(bundle.tokenizer, ByteTokenizer)
  assert bundle.train.num_tokens > 1000 and bundle.valid.num_tokens > 100
  assert bundle.fingerprint == _build(_cfg(max_docs=5)).fingerprint
  assert bundle.fingerprint != _build(_cfg(max_docs=6)).fingerprint
  assert bundle.train.batch(0)["tokens"].shape == (4, 32)


def test_tasks_source_has_disjoint_valid_split():
  cfg = _cfg(source="tasks", tasks="copy,sudoku", num_task_examples=300, valid_fraction=0.1)
  bundle = _build(cfg, seed=2)
  tok = bundle.tokenizer
  train_docs = tasks.task_documents(["copy", "sudoku"], 300, 2)
  np.testing.assert_array_equal(bundle.train.source,
                                store.tokenize_documents(train_docs, tok))
  eos = tok.eos_id
  valid = bundle.valid.source
  valid_docs = [tok.decode(d) for d in np.split(valid, np.flatnonzero(valid == eos) + 1)
                if d.size]
  assert 0 < len(valid_docs) <= 60 and not set(valid_docs) & set(train_docs)
  for doc in valid_docs:  # every held-out text is a well-formed, correct example
    prompt, answer = doc.split("=")
    assert tasks.TASKS[prompt.split(":")[0]].score(prompt + "=", answer, strict=True)
  assert bundle.fingerprint != _build(cfg, seed=3).fingerprint



def test_training_examples_are_the_rows_a_task_run_trains_on():
  cfg = _cfg(source="tasks", tasks="sort,reverse", num_task_examples=50)
  docs = tasks.task_documents(["sort", "reverse"], 50, 3)  # the texts build_data trains on
  examples = pipeline.training_examples(cfg, "sort", 3, 20)
  assert [ex.prompt + ex.answer for ex in examples] == docs[0::2][:20]
  assert len(pipeline.training_examples(cfg, "sort", 3, 500)) == 50  # all there are
  assert ({ex.prompt for ex in pipeline.training_examples(cfg, "sort", 3)}
          == pipeline.training_prompts(cfg, 3)["sort"])
  with pytest.raises(ValueError, match="data.source"):
    pipeline.training_examples(_cfg(source="stdlib"), "sort", 3)

def test_text_and_tensorstore_sources(tmp_path):
  for i in range(6):
    (tmp_path / f"doc{i}.txt").write_text(f"text file {i} " * 20)
  text_cfg = _cfg(source="text", path=str(tmp_path / "*.txt"), valid_fraction=0.25)
  text = _build(text_cfg)
  store.prepare([str(tmp_path / "*.txt")], str(tmp_path / "ds"), ByteTokenizer(),
                show_progress=False)
  ts_cfg = _cfg(source="tensorstore", path=str(tmp_path / "ds"), valid_fraction=0.25)
  tens = _build(ts_cfg)
  assert text.train.num_tokens + text.valid.num_tokens == tens.train.num_tokens + (
      tens.valid.num_tokens)
  for a, b in ((text.train.batch(3), tens.train.batch(3)),
               (next(text.valid.eval_batches(1)), next(tens.valid.eval_batches(1)))):
    np.testing.assert_array_equal(a["tokens"], b["tokens"])
    np.testing.assert_array_equal(a["segment_ids"], b["segment_ids"])
  assert len(text.fingerprint) == len(tens.fingerprint) == 64


def test_tensorstore_tokenizer_mismatch(tmp_path, hf_tokenizer_json):
  (tmp_path / "a.txt").write_text("the cat sat " * 50)
  store.prepare([str(tmp_path / "a.txt")], str(tmp_path / "ds"), ByteTokenizer(),
                show_progress=False)
  cfg = _cfg(source="tensorstore", path=str(tmp_path / "ds"), tokenizer=hf_tokenizer_json)
  with pytest.raises(ValueError, match="data.tokenizer"):
    _build(cfg)


def test_hf_tokenizer_with_text_source(tmp_path, hf_tokenizer_json):
  (tmp_path / "a.txt").write_text("the cat sat on the mat " * 40)
  cfg = _cfg(source="text", path=str(tmp_path / "a.txt"), tokenizer=hf_tokenizer_json)
  with pytest.raises(ValueError, match="valid split holds 4 tokens"):
    _build(cfg, seq_len=8)
  cfg.valid_fraction = 0.2
  bundle = _build(cfg, seq_len=8)
  assert bundle.tokenizer.decode(bundle.train.batch(0)["tokens"][0]).startswith(
      ("the", "cat", "sat", "on", "mat"))


def test_answer_only_tasks_are_padded_rows_with_answer_masks():
  bundle = _build(_cfg(source="tasks", tasks="copy", num_task_examples=300, answer_only=True),
                  seq_len=40)
  tok = bundle.tokenizer
  batch = bundle.train.batch(0)
  tokens, eligible = batch["tokens"], batch["eligible"]
  sep = tok.encode(tasks.ANSWER_SEPARATOR)[0]
  for row, elig in zip(tokens, eligible):
    text = tok.decode(row)
    assert text.startswith("copy: ")  # every row is one whole example
    first_sep = int(np.argmax(row == sep))
    assert not elig[:first_sep + 1].any() and elig[first_sep + 1:].all()
    assert row[-1] == tok.eos_id  # right-padded with EOS
  with pytest.raises(ValueError, match="data.answer_only"):
    pipeline.validate_data_config(_cfg(answer_only=True))
  with pytest.raises(ValueError, match="train.seq_len"):
    _build(_cfg(source="tasks", tasks="copy", num_task_examples=300, answer_only=True),
           seq_len=16)
