"""Hugging Face checkpoints in and out (``bdiff convert``, ``bdiff export``): Llama, Qwen2/Qwen2.5,
Qwen3, the block-diffusion families SDAR and Fast-dLLM v2, and the full-attention ones Dream
and LLaDA."""
from bdiff.convert.families import FAMILIES, hf_config_from_model, model_config_from_hf
from bdiff.convert.hf_export import export_to_hf, hf_tensors
from bdiff.convert.hf_import import check_tensors, convert_from_hf, hf_config, load_params

__all__ = ["FAMILIES", "check_tensors", "convert_from_hf", "export_to_hf", "hf_config",
           "hf_config_from_model", "hf_tensors", "load_params", "model_config_from_hf"]
