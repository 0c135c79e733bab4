"""bdiff: block diffusion language models in JAX.

The curated public API; everything else is importable from its module (``bdiff.masks``,
``bdiff.diffusion``, ``bdiff.data``, ``bdiff.sampling``, ``bdiff.train``, ...).
"""
from bdiff import masks
from bdiff.attention import attend
from bdiff.config import base_config, validate
from bdiff.models import make_model, two_stream_logits
from bdiff.runs import Sampler, restore_params
from bdiff.sampling import SamplerConfig
from bdiff.sampling.generate import generate

__version__ = "0.1.0"

__all__ = ["Sampler", "SamplerConfig", "attend", "base_config", "generate", "make_model",
           "masks", "restore_params", "two_stream_logits", "validate"]
