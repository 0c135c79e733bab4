"""Block-sparse attention driven by a sparsity plan (kernels.md §3-§4): see ``api``."""
from pallas_kernels.block_sparse_attention.api import (BlockSizes, SparsityPlan,
                                                       block_sparse_attention, plan_for_mask,
                                                       plan_from_scores, plan_from_selection)

__all__ = ["BlockSizes", "SparsityPlan", "block_sparse_attention", "plan_for_mask",
           "plan_from_scores", "plan_from_selection"]
