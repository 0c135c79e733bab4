"""Shared pytest setup: 8 fake CPU devices (sharding tests), set before JAX initialises."""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402  (the environment must be set first)

jax.config.update("jax_num_cpu_devices", 8)
