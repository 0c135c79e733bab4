"""Chat templates and SFT examples from a Hugging Face tokenizer's own template.

A chat checkpoint (Qwen, Llama-3-Instruct, SDAR-Chat, Fast-dLLM v2, Dream-Instruct, ...) ships its
prompt format as a jinja template in ``tokenizer_config.json`` (``chat_template``). We render
it the way the Hugging Face ``transformers`` library does (``apply_chat_template``): a
sandboxed jinja environment with ``trim_blocks``/``lstrip_blocks`` and loop controls, the
special tokens of the tokenizer config as variables, a ``tojson`` filter that keeps non-ASCII
text, ``raise_exception`` and ``strftime_now`` helpers. So a prompt sampled through bdiff
sees exactly the text the model was tuned on.

SFT data (``{"messages": [...]}`` or ``{"prompt": ..., "response": ...}`` per JSONL line)
becomes (token ids, answer mask): the prompt is the conversation up to the last assistant
turn rendered with the generation prompt, the answer is what the full conversation adds to
it (the assistant text and the template's end-of-turn tokens, which is how the model learns
to stop). Loss goes on answer tokens only, as in LLaDA's and Fast-dLLM v2's SFT.
"""
from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import os
from typing import Any, Sequence

import numpy as np

ROLES = ("system", "user", "assistant", "tool")
# End-of-turn markers of common chat formats (ChatML/Qwen, Llama 3, Gemma, Phi-3, Llama 4).
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "<|eot|>")


def _jinja():
  try:
    import jinja2  # pylint: disable=import-outside-toplevel  (optional: the `hf` extra)
    import jinja2.ext  # pylint: disable=import-outside-toplevel
    import jinja2.sandbox  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError("chat templates need jinja2: pip install 'bdiff[hf]'") from e
  return jinja2


def _raise_exception(message: str):
  raise ValueError(f"chat template refused the conversation: {message}")


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
  return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                    sort_keys=sort_keys)


def token_text(value) -> str | None:
  """A special token as tokenizer_config.json writes it: a string or {"content": ...}."""
  if isinstance(value, dict):
    return value.get("content")
  return value


@dataclasses.dataclass(frozen=True)
class ChatTemplate:
  """A compiled chat template with the special tokens it may refer to."""
  source: str
  special_tokens: dict[str, str]

  @classmethod
  def from_tokenizer_config(cls, path: str, name: str = "default") -> ChatTemplate:
    """Reads ``tokenizer_config.json`` (or a directory holding it).

    ``name`` picks one of several named templates (a list of ``{"name", "template"}``).
    """
    if os.path.isdir(path):
      path = os.path.join(path, "tokenizer_config.json")
    with open(path, encoding="utf-8") as f:
      config = json.load(f)
    template = config.get("chat_template")
    if isinstance(template, list):
      named = {t.get("name"): t.get("template") for t in template}
      if name not in named:
        raise ValueError(f"{path}: chat_template has no template named {name!r} "
                         f"(has {sorted(named)})")
      template = named[name]
    if not isinstance(template, str) or not template:
      raise ValueError(f"{path}: no chat_template string; this tokenizer has no chat format")
    specials = {k: token_text(v) for k, v in config.items()
                if k.endswith("_token") and token_text(v) is not None}
    return cls(template, specials)

  @functools.cached_property
  def _compiled(self):
    """The jinja template, compiled once (SFT data renders every record twice)."""
    jinja2 = _jinja()
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
    return env.from_string(self.source)

  def render(self, messages: Sequence[dict], add_generation_prompt: bool = False,
             **extra: Any) -> str:
    """The conversation as the model sees it (``apply_chat_template(tokenize=False)``)."""
    check_messages(messages)
    return self._compiled.render(messages=list(messages),
                                 add_generation_prompt=add_generation_prompt,
                                 **self.special_tokens, **extra)


def check_messages(messages: Sequence[dict], where: str = "messages") -> None:
  """Each message a {"role", "content"} dict with a known role; names the bad one."""
  if not isinstance(messages, (list, tuple)) or not messages:
    raise ValueError(f"{where}: expected a non-empty list of messages")
  for i, m in enumerate(messages):
    if not isinstance(m, dict) or m.get("role") not in ROLES:
      raise ValueError(f"{where}[{i}]: expected a dict with role in {ROLES}, got {m!r}")
    if not isinstance(m.get("content"), str):
      raise ValueError(f"{where}[{i}].content: expected a string, got {m.get('content')!r}")


def sft_messages(item: Any, where: str) -> list[dict]:
  """The conversation of one SFT record: ``{"messages": [...]}`` or prompt/response."""
  if isinstance(item, dict) and "messages" in item:
    messages = item["messages"]
  elif isinstance(item, dict) and "prompt" in item and "response" in item:
    messages = [{"role": "user", "content": item["prompt"]},
                {"role": "assistant", "content": item["response"]}]
  else:
    raise ValueError(f"{where}: expected an object with 'messages' or 'prompt' and 'response'")
  check_messages(messages, f"{where}: messages")
  if messages[-1]["role"] != "assistant":
    raise ValueError(f"{where}: the last message must be the assistant's answer")
  return messages


def sft_example(template: ChatTemplate, tokenizer, messages: Sequence[dict],
                where: str = "example") -> tuple[np.ndarray, np.ndarray]:
  """(token ids, answer mask) of one conversation; loss goes where the mask is True."""
  prompt = template.render(messages[:-1], add_generation_prompt=True)
  full = template.render(messages, add_generation_prompt=False)
  if not full.startswith(prompt):
    raise ValueError(f"{where}: the template renders the history differently with and without "
                     "the answer, so prompt and answer cannot be split")
  prompt_ids = tokenizer.encode(prompt)
  answer_ids = tokenizer.encode(full[len(prompt):])
  ids = np.asarray(list(prompt_ids) + list(answer_ids), np.int32)
  mask = np.zeros(len(ids), bool)
  mask[len(prompt_ids):] = True
  return ids, mask


def plain_example(tokenizer, messages: Sequence[dict]) -> tuple[np.ndarray, np.ndarray]:
  """(ids, answer mask) without a chat template: ``prompt + response + EOS``.

  The prompt is the earlier messages' text joined by newlines; the answer (masked True) is the
  last message's text and the EOS that ends it, so the model learns where to stop.
  """
  prompt_ids = tokenizer.encode("\n".join(m["content"] for m in messages[:-1]))
  answer_ids = list(tokenizer.encode(messages[-1]["content"])) + [tokenizer.eos_id]
  ids = np.asarray(list(prompt_ids) + answer_ids, np.int32)
  mask = np.zeros(len(ids), bool)
  mask[len(prompt_ids):] = True
  return ids, mask


def read_sft_records(path: str) -> list[tuple[str, list[dict]]]:
  """``(file:line, conversation)`` of every record of a JSONL file; errors name ``file:line``."""
  records = []
  with open(path, encoding="utf-8") as f:
    for lineno, line in enumerate(f, 1):
      if not line.strip():
        continue
      where = f"{path}:{lineno}"
      try:
        item = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{where}: not JSON ({e.msg})") from None
      records.append((where, sft_messages(item, where)))
  if not records:
    raise ValueError(f"{path}: no conversations")
  return records


def read_sft_jsonl(path: str) -> list[list[dict]]:
  """Every conversation of a JSONL file; errors name ``file:line``."""
  return [messages for _, messages in read_sft_records(path)]


def tokenizer_config_path(tokenizer_path: str) -> str:
  """The ``tokenizer_config.json`` beside a ``tokenizer.json``."""
  return os.path.join(os.path.dirname(os.path.abspath(tokenizer_path)), "tokenizer_config.json")


def template_for_tokenizer(tokenizer_path: str, required: bool = False) -> ChatTemplate | None:
  """The chat template beside ``data.tokenizer``; None for "bytes" or a tokenizer without one.

  ``required``: a missing file or template is a ValueError naming the path instead.
  """
  path = "" if tokenizer_path == "bytes" else tokenizer_config_path(tokenizer_path)
  if not path or not os.path.isfile(path):
    if required:
      where = f"there is no {path}" if path else "the byte tokenizer has none"
      raise ValueError(f"chat mode needs a chat template from the tokenizer_config.json beside "
                       f"data.tokenizer={tokenizer_path!r}: {where}")
    return None
  try:
    return ChatTemplate.from_tokenizer_config(path)
  except ValueError:
    if required:
      raise
    return None


def _generation_eos_ids(directory: str) -> list[int]:
  """``eos_token_id`` (an int or a list) of the generation_config.json in ``directory``."""
  path = os.path.join(directory, "generation_config.json")
  if not os.path.isfile(path):
    return []
  with open(path, encoding="utf-8") as f:
    ids = json.load(f).get("eos_token_id")
  ids = [ids] if isinstance(ids, int) else (ids or [])
  return [i for i in ids if isinstance(i, int)]


def end_of_turn_ids(template: ChatTemplate, tokenizer, tokenizer_path: str) -> tuple[int, ...]:
  """Token ids that end an assistant turn, besides the tokenizer's EOS.

  What the checkpoint names: its tokenizer config's ``eos_token`` and generation config's
  ``eos_token_id`` (Qwen2.5-Instruct: ``<|im_end|>``; Llama-3-Instruct: ``<|eot_id|>``), and
  the known end-of-turn markers its chat template writes, each when it is one token.
  """
  names = [m for m in END_OF_TURN_TOKENS if m in template.source]
  names += [template.special_tokens.get("eos_token") or ""]
  encoded = [tokenizer.encode(n) for n in names if n]
  ids = [int(e[0]) for e in encoded if len(e) == 1]  # a marker split into pieces cannot stop
  ids += _generation_eos_ids(os.path.dirname(os.path.abspath(tokenizer_path)))
  return tuple(sorted(set(ids) - {tokenizer.eos_id}))
