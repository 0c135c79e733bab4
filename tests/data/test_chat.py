"""Chat templates rendered as transformers' apply_chat_template does; SFT prompt/answer split."""
import json

import numpy as np
import pytest

from bdiff.data import ByteTokenizer
from bdiff.data import chat

CHATML = (
    "{%- if messages[0].role != 'system' %}"
    "{{- '<|im_start|>system\\nYou are helpful.<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}")

# Block tags on their own lines: trim_blocks/lstrip_blocks decide the whitespace.
LLAMA3 = """{{ bos_token }}
{% for m in messages %}
<|start_header_id|>{{ m['role'] }}<|end_header_id|>

{{ m['content'] | trim }}<|eot_id|>
{% endfor %}
{% if add_generation_prompt %}
<|start_header_id|>assistant<|end_header_id|>

{% endif %}"""


def write_config(tmp_path, template, **tokens):
  (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": template,
                                                              **tokens}))
  return chat.ChatTemplate.from_tokenizer_config(str(tmp_path))


def test_chatml_render(tmp_path):
  t = write_config(tmp_path, CHATML)
  msgs = [{"role": "user", "content": "2+2?"}]
  assert t.render(msgs, add_generation_prompt=True) == (
      "<|im_start|>system\nYou are helpful.<|im_end|>\n"
      "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n")
  assert t.render(msgs).endswith("2+2?<|im_end|>\n")


def test_special_tokens_and_block_whitespace(tmp_path):
  t = write_config(tmp_path, LLAMA3, bos_token={"content": "<|begin_of_text|>"})
  out = t.render([{"role": "user", "content": " hi "}], add_generation_prompt=True)
  # trim_blocks drops the newline after each block tag, not after {{ }} or plain text.
  assert out == ("<|begin_of_text|>\n<|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>\n"
                 "<|start_header_id|>assistant<|end_header_id|>\n\n")


def test_helpers_tojson_and_raise(tmp_path):
  t = write_config(tmp_path, "{{ messages[0].content | tojson }}"
                   "{% if messages|length > 1 %}{{ raise_exception('one only') }}{% endif %}")
  assert t.render([{"role": "user", "content": "héllo"}]) == '"héllo"'
  with pytest.raises(ValueError, match="one only"):
    t.render([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])


def test_named_templates_and_missing_template(tmp_path):
  t = write_config(tmp_path, [{"name": "default", "template": "D"},
                              {"name": "tool_use", "template": "T"}])
  assert t.render([{"role": "user", "content": "x"}]) == "D"
  with pytest.raises(ValueError, match="no template named 'rag'"):
    chat.ChatTemplate.from_tokenizer_config(str(tmp_path), name="rag")
  (tmp_path / "tokenizer_config.json").write_text("{}")
  with pytest.raises(ValueError, match="no chat_template"):
    chat.ChatTemplate.from_tokenizer_config(str(tmp_path))


def test_bad_messages_name_the_message():
  with pytest.raises(ValueError, match=r"messages\[1\]: expected a dict with role"):
    chat.check_messages([{"role": "user", "content": "a"}, {"role": "bot", "content": "b"}])
  with pytest.raises(ValueError, match=r"messages\[0\].content"):
    chat.check_messages([{"role": "user", "content": None}])


def test_sft_example_masks_the_answer_and_end_of_turn(tmp_path):
  t = write_config(tmp_path, CHATML)
  tok = ByteTokenizer()
  msgs = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]
  ids, mask = chat.sft_example(t, tok, msgs)
  assert tok.decode(ids[mask]) == "4<|im_end|>\n"
  assert tok.decode(ids[~mask]) == t.render(msgs[:1], add_generation_prompt=True)
  assert ids.dtype == np.int32 and mask.dtype == bool


def test_read_sft_jsonl_forms_and_errors(tmp_path):
  path = tmp_path / "sft.jsonl"
  path.write_text(json.dumps({"prompt": "p", "response": "r"}) + "\n\n"
                  + json.dumps({"messages": [{"role": "user", "content": "q"},
                                             {"role": "assistant", "content": "a"}]}) + "\n")
  convs = chat.read_sft_jsonl(str(path))
  assert [c[-1]["content"] for c in convs] == ["r", "a"]
  path.write_text(json.dumps({"prompt": "p", "response": "r"}) + "\n{oops\n")
  with pytest.raises(ValueError, match=r"sft.jsonl:2: not JSON"):
    chat.read_sft_jsonl(str(path))
  path.write_text(json.dumps({"messages": [{"role": "user", "content": "q"}]}) + "\n")
  with pytest.raises(ValueError, match=r"sft.jsonl:1: the last message must be the assistant"):
    chat.read_sft_jsonl(str(path))


def test_end_of_turn_ids_from_template_and_generation_config(tmp_path):
  t = write_config(tmp_path, LLAMA3 + "{{ '<|im_end|>' if false }}", eos_token="</s>")
  tok = ByteTokenizer()  # no marker is one byte token: only the generation config's ids count
  tokenizer_path = str(tmp_path / "tokenizer.json")
  assert chat.end_of_turn_ids(t, tok, tokenizer_path) == ()
  (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [7, 257, 9]}))
  assert chat.end_of_turn_ids(t, tok, tokenizer_path) == (7, 9)  # 257 is the EOS itself


class _Vocab:
  """A tokenizer whose special markers are single tokens (ids 300+)."""
  eos_id = 300
  specials = {"</s>": 300, "<|eot_id|>": 301, "<|im_end|>": 302}

  def encode(self, text):
    return [self.specials[text]] if text in self.specials else list(text.encode())


def test_end_of_turn_ids_are_the_markers_the_template_writes(tmp_path):
  t = write_config(tmp_path, LLAMA3, eos_token="<|eot_id|>")
  # Llama 3 writes <|eot_id|> (also its eos_token); <|im_end|> is not in its template
  assert chat.end_of_turn_ids(t, _Vocab(), str(tmp_path / "tokenizer.json")) == (301,)
  t = write_config(tmp_path, CHATML)
  assert chat.end_of_turn_ids(t, _Vocab(), str(tmp_path / "tokenizer.json")) == (302,)


def test_template_for_tokenizer(tmp_path):
  assert chat.template_for_tokenizer("bytes") is None
  with pytest.raises(ValueError, match="the byte tokenizer has none"):
    chat.template_for_tokenizer("bytes", required=True)
  tokenizer_path = str(tmp_path / "tokenizer.json")
  with pytest.raises(ValueError, match="there is no .*tokenizer_config.json"):
    chat.template_for_tokenizer(tokenizer_path, required=True)
  (tmp_path / "tokenizer_config.json").write_text("{}")
  assert chat.template_for_tokenizer(tokenizer_path) is None
  with pytest.raises(ValueError, match="tokenizer_config.json: no chat_template"):
    chat.template_for_tokenizer(tokenizer_path, required=True)
  write_config(tmp_path, CHATML)
  assert chat.template_for_tokenizer(tokenizer_path).source == CHATML


def test_plain_example_is_prompt_response_eos():
  tok = ByteTokenizer()
  msgs = [{"role": "user", "content": "ab"}, {"role": "assistant", "content": "c"}]
  ids, mask = chat.plain_example(tok, msgs)
  assert list(ids) == [97, 98, 99, tok.eos_id] and list(mask) == [False, False, True, True]
