"""Block-sparse attention driven by a sparsity plan (tile lists in the style of jax's splash
attention, jax-ml/jax ``jax/experimental/pallas/ops/tpu/splash_attention``): see ``api``."""
from pallas_kernels.block_sparse_attention.api import (BlockSizes, SparsityPlan,
                                                       block_sparse_attention, plan_for_mask,
                                                       plan_from_scores, plan_from_selection)

__all__ = ["BlockSizes", "SparsityPlan", "block_sparse_attention", "plan_for_mask",
           "plan_from_scores", "plan_from_selection"]
