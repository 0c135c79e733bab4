"""The block diffusion process, pure jnp: schedules, corruption, losses, the training objective.

BD3-LM (Arriola et al. 2025, arXiv 2503.09573; kuleshov-group/bd3lms) with options from MDLM,
MD4, LLaDA, Fast-dLLM v2 and NBDiff; docs/training.md explains the objective.
"""
from bdiff.diffusion.corruption import apply_mask
from bdiff.diffusion.corruption import check_clip_window
from bdiff.diffusion.corruption import clip_t
from bdiff.diffusion.corruption import clip_window_is_achievable
from bdiff.diffusion.corruption import complementary_mask
from bdiff.diffusion.corruption import count_bounds
from bdiff.diffusion.corruption import mask_tokens
from bdiff.diffusion.corruption import resample_enforcement
from bdiff.diffusion.corruption import sample_t
from bdiff.diffusion.losses import autoregressive_loss
from bdiff.diffusion.losses import loss_weights
from bdiff.diffusion.losses import masked_cross_entropy
from bdiff.diffusion.losses import REDUCTIONS
from bdiff.diffusion.losses import reduce_loss
from bdiff.diffusion.losses import shift_logits
from bdiff.diffusion.losses import summarize_nelbo
from bdiff.diffusion.losses import t_bucket_losses
from bdiff.diffusion.losses import WEIGHTINGS
from bdiff.diffusion.objective import default_diffusion_config
from bdiff.diffusion.objective import nelbo
from bdiff.diffusion.objective import training_loss
from bdiff.diffusion.objective import validate_diffusion_config
from bdiff.diffusion.schedules import get_schedule
from bdiff.diffusion.schedules import Schedule
from bdiff.diffusion.schedules import SCHEDULE_NAMES

__all__ = [
    "apply_mask",
    "check_clip_window",
    "clip_t",
    "clip_window_is_achievable",
    "complementary_mask",
    "count_bounds",
    "mask_tokens",
    "resample_enforcement",
    "sample_t",
    "autoregressive_loss",
    "loss_weights",
    "masked_cross_entropy",
    "REDUCTIONS",
    "reduce_loss",
    "shift_logits",
    "summarize_nelbo",
    "t_bucket_losses",
    "WEIGHTINGS",
    "default_diffusion_config",
    "nelbo",
    "training_loss",
    "validate_diffusion_config",
    "get_schedule",
    "Schedule",
    "SCHEDULE_NAMES",
]
