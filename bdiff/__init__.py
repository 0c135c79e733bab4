"""bdiff: block diffusion language models in JAX.

The curated public API; everything else is importable from its module (``bdiff.masks``,
``bdiff.diffusion``, ``bdiff.data``, ``bdiff.sampling``, ``bdiff.train``, ...):

* configs: :func:`base_config`, :func:`validate`;
* training: :func:`train` (or resume) a run in a work directory;
* inference: :class:`Sampler` (text in, text out), :func:`restore_params`, :func:`generate`
  (arrays in, arrays out), :func:`evaluate` (task accuracy);
* real checkpoints: :mod:`bdiff.convert` (``hf_config``, ``convert_from_hf``, ``export_to_hf``);
* building blocks: :mod:`bdiff.masks`, :func:`attend`, :func:`make_model`,
  :func:`two_stream_logits`.
"""
from bdiff import convert
from bdiff import masks
from bdiff.attention import attend
from bdiff.config import base_config, validate
from bdiff.eval.tasks import evaluate
from bdiff.models import make_model, two_stream_logits
from bdiff.runs import Sampler, restore_params, sample_file
from bdiff.sampling import SamplerConfig
from bdiff.sampling.generate import generate
from bdiff.train.loop import train

__version__ = "0.1.0"

__all__ = ["Sampler", "SamplerConfig", "attend", "base_config", "convert", "evaluate",
           "generate", "make_model", "masks", "restore_params", "sample_file", "train",
           "two_stream_logits", "validate"]
