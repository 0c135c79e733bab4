"""Flax Linen networks."""
from bdiff.models.transformer import (Transformer, count_params, default_model_config, embed_rows,
                                      make_model, mask_token_id, two_stream_logits,
                                      validate_model_config)

__all__ = ["Transformer", "count_params", "default_model_config", "embed_rows", "make_model",
           "mask_token_id", "two_stream_logits", "validate_model_config"]
