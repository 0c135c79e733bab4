"""bdiff: block diffusion language models in JAX."""
from setuptools import find_packages, setup

setup(
    name="bdiff",
    version="0.1.0",
    description="JAX research framework for block diffusion language models",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.12",
    packages=find_packages(include=["bdiff", "bdiff.*", "pallas_kernels", "pallas_kernels.*"]),
    install_requires=[
        "jax>=0.11.2,<0.12",
        "flax>=0.12.10,<0.13",
        "optax>=0.2.8",
        "orbax-checkpoint>=0.12.4",
        "tensorstore>=0.1.85",
        "chex>=0.1.92",
        "ml-collections>=1.1.0",
        "numpy>=2.0",
        "tqdm",
        "tensorboardX",
        "matplotlib",
        "absl-py",
    ],
    extras_require={
        # setuptools: tests/test_notebook.py builds bdiff offline (pip --no-build-isolation).
        "dev": ["pytest", "pytest-xdist", "nbclient", "nbformat", "ipykernel", "setuptools"],
        "hf": ["tokenizers>=0.20", "safetensors", "jinja2>=3.1"],
        "gpu": ["jax[cuda12]>=0.11.2,<0.12", "tokamax==0.0.17"],
        "tpu": ["jax[tpu]>=0.11.2,<0.12"],
    },
    entry_points={"console_scripts": ["bdiff=bdiff.cli:main"]},
)
