"""`bdiff sample --chat` on a converted tiny Qwen3 fixture: prompts rendered with its chat
template, generation stopped at the template's end-of-turn tokens, clear errors."""
import json
import os

import pytest

from bdiff import convert, runs
from bdiff.data import chat
from bdiff.train import checkpointing
from bdiff import config as config_lib

from cli_common import call, one_line_error  # tests/cli_common.py

QWEN3 = os.path.join(os.path.dirname(__file__), "fixtures", "hf", "qwen3")
USER = [{"role": "user", "content": "hi"}]


def convert_run(workdir) -> str:
  convert.convert_from_hf(QWEN3, str(workdir), progress=False)
  return str(workdir)


@pytest.fixture(scope="module", name="run")
def _run(tmp_path_factory):
  return convert_run(tmp_path_factory.mktemp("chat") / "run")


def run_cfg(workdir, chat_mode=True):
  cfg = config_lib.from_dict(checkpointing.read_meta(workdir)["config"])
  cfg.sample.update(chat=chat_mode, max_new_tokens=8)
  return cfg


def test_chat_prompt_is_the_rendered_template(run):
  sampler = runs.Sampler.from_run(run, run_cfg(run))
  template = chat.ChatTemplate.from_tokenizer_config(QWEN3)
  tok = sampler.tokenizer
  rendered = template.render(USER, add_generation_prompt=True)
  assert rendered.startswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
  # no prefix token: the template writes what a conversation starts with
  assert list(sampler.encode("hi")) == tok.encode(rendered)
  messages = [{"role": "system", "content": "s"}, *USER]
  assert list(sampler.encode(messages)) == tok.encode(
      template.render(messages, add_generation_prompt=True))
  plain = runs.Sampler.from_run(run, run_cfg(run, chat_mode=False))
  assert list(plain.encode("hi")) == plain.tokenizer.encode("hi")
  with pytest.raises(ValueError, match="needs chat mode"):
    plain.encode(messages)


def test_chat_mode_also_stops_at_end_of_turn(run):
  sampler = runs.Sampler.from_run(run, run_cfg(run))
  tok = sampler.tokenizer
  im_end, eos = tok.encode("<|im_end|>"), tok.eos_id
  assert len(im_end) == 1 and set(sampler.config.stop_ids) == {eos, im_end[0]}
  assert runs.Sampler.from_run(run, run_cfg(run, False)).config.stop_ids == (eos,)
  cfg = run_cfg(run)
  cfg.sample.stop_at_eos = False
  assert runs.Sampler.from_run(run, cfg).config.stop_ids == ()


def _sample(capsys, workdir, prompts, out, *flags):
  code, _, err = call(capsys, "sample", "--workdir", workdir, "--prompts", prompts, "--out", out,
                      "--config.sample.max_new_tokens=8", *flags)
  assert code == 0, err
  with open(out, encoding="utf-8") as f:
    return [json.loads(line) for line in f]


def test_cli_chat_stops_at_the_checkpoints_end_of_turn_ids(capsys, tmp_path):
  """Greedy output T; naming its i-th token in generation_config.json's eos_token_id makes
  `sample --chat` stop right after that token, and decode drop it."""
  workdir = convert_run(tmp_path / "run")
  prompts = tmp_path / "p.jsonl"
  prompts.write_text(json.dumps({"prompt": "hi"}) + "\n"
                     + json.dumps({"messages": [{"role": "system", "content": "s"}, *USER]})
                     + "\n")
  first = _sample(capsys, workdir, prompts, tmp_path / "a.jsonl", "--chat")
  assert first[1]["prompt"][0]["role"] == "system"
  tokens = first[0]["tokens"]
  stops = {0, 2}  # <|endoftext|>, <|im_end|>
  picks = [i for i, t in enumerate(tokens) if i >= 1 and t not in stops and tokens.index(t) == i]
  assert picks, tokens
  i = picks[0]
  gen_config = os.path.join(workdir, "hf", "generation_config.json")
  with open(gen_config, "w", encoding="utf-8") as f:
    json.dump({"eos_token_id": [0, tokens[i]]}, f)
  again = _sample(capsys, workdir, prompts, tmp_path / "b.jsonl", "--chat")
  assert again[0]["tokens"] == tokens[:i + 1]
  assert again[0]["text"] == first[0]["text"][:len(again[0]["text"])]


def _plain(tmp_path):
  path = tmp_path / "plain.jsonl"
  path.write_text(json.dumps({"prompt": "hi"}) + "\n")
  return path


def test_missing_chat_template_is_one_line_naming_the_file(capsys, tmp_path):
  workdir = convert_run(tmp_path / "run")
  config_path = os.path.join(workdir, "hf", "tokenizer_config.json")
  with open(config_path, encoding="utf-8") as f:
    tok_config = json.load(f)
  del tok_config["chat_template"]
  with open(config_path, "w", encoding="utf-8") as f:
    json.dump(tok_config, f)
  code, _, err = call(capsys, "sample", "--workdir", workdir, "--prompts", _plain(tmp_path),
                      "--out", tmp_path / "o.jsonl", "--chat")
  assert code != 0
  line = one_line_error(err)
  assert "no chat_template" in line and config_path in line


def test_prompt_files_in_chat_mode(tmp_path):
  path = tmp_path / "p.jsonl"
  path.write_text(json.dumps({"messages": USER}) + "\n" + json.dumps({"prompt": "x"}) + "\n")
  assert runs.read_prompts(str(path), chat=True) == [USER, "x"]
  with pytest.raises(ValueError, match=r"p.jsonl:1: expected an object with a 'prompt' string"):
    runs.read_prompts(str(path))
  path.write_text(json.dumps({"messages": [{"role": "bot", "content": "x"}]}) + "\n")
  with pytest.raises(ValueError, match=r"p.jsonl:1: messages\[0\]: expected a dict with role"):
    runs.read_prompts(str(path), chat=True)


def test_sample_file_follows_the_runs_own_chat_setting(tmp_path):
  """No config given: the run's saved ``sample.chat`` decides how the prompts file is read
  (a messages line used to be refused as "needs a 'prompt' string" before the model loaded)."""
  cfg = convert.hf_config(QWEN3)
  cfg.sample.update(chat=True, max_new_tokens=4)
  workdir = str(tmp_path / "run")
  convert.convert_from_hf(QWEN3, workdir, cfg, progress=False)
  prompts = tmp_path / "p.jsonl"
  prompts.write_text(json.dumps({"messages": USER}) + "\n")
  records = runs.sample_file(None, workdir, str(prompts), str(tmp_path / "out.jsonl"))
  assert len(records) == 1 and records[0]["prompt"] == USER
