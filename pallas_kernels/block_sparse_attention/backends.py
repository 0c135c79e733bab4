"""The kernel backends' names: a leaf module (no imports), so that configs can validate a
backend name without importing the kernels (which import ``bdiff.masks`` and, through the
``bdiff`` package, the models that read this list)."""

BACKENDS = ("tpu", "tpu_interpret", "gpu", "gpu_interpret", "reference")
