"""Data: tokenizers, built-in corpora and tasks, the tensorstore token store and loaders."""
from bdiff.data.corpora import stdlib_documents, stdlib_fingerprint, stdlib_paths
from bdiff.data.loader import TokenLoader, segment_ids_and_positions
from bdiff.data.pipeline import (DataBundle, build_data, default_data_config, task_names,
                                 training_examples, training_prompts, validate_data_config)
from bdiff.data.store import open_tokens, prepare, tokenize_documents
from bdiff.data.tasks import (TASKS, Example, GridTask, ListTask, Task, get_task,
                              held_out_examples, make_examples, task_documents)
from bdiff.data.tokenizers import ByteTokenizer, HFTokenizer, Tokenizer, get_tokenizer

__all__ = [
    "ByteTokenizer", "DataBundle", "Example", "GridTask", "HFTokenizer", "ListTask", "TASKS",
    "Task", "TokenLoader", "Tokenizer", "build_data", "default_data_config", "get_task",
    "get_tokenizer", "held_out_examples", "make_examples", "open_tokens", "prepare",
    "segment_ids_and_positions", "stdlib_documents", "stdlib_fingerprint", "stdlib_paths",
    "task_documents", "task_names", "tokenize_documents", "training_examples",
    "training_prompts",
    "validate_data_config",
]
