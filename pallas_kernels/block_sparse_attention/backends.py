"""The kernel backends' names, in a leaf module (no imports).

The kernels import ``bdiff.masks``, which runs ``bdiff/__init__.py`` and so imports the models
while the kernel API is still half imported; the models read this list from here, a module
complete on its own, instead of from that half-imported API."""

BACKENDS = ("tpu", "tpu_interpret", "gpu", "gpu_interpret", "reference")
