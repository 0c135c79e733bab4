"""Flax Linen networks."""
from bdiff.models.transformer import (Transformer, count_params, default_model_config,
                                      make_model, two_stream_logits, validate_model_config)

__all__ = ["Transformer", "count_params", "default_model_config", "make_model", "two_stream_logits",
           "validate_model_config"]
