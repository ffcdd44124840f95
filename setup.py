"""Packaging for Tensor Cache (JAX/Flax). Minimum versions only; no upper pins."""

from setuptools import find_packages, setup

setup(
    name="tensorcache",
    version="0.1.0",
    description=(
        "Tensor Cache: sliding-window attention plus a per-head outer-product "
        "associative memory fed by evicted key/value pairs (JAX/Flax)."
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(
        include=["tensorcache", "tensorcache.*", "pallas_kernels", "pallas_kernels.*"],
        exclude=["tests", "tests.*"],
    ),
    install_requires=[
        "jax>=0.10.2",
        "flax>=0.10",
        "optax>=0.2",
        "ml-collections>=1.0",
        "orbax-checkpoint>=0.11",
        "numpy>=1.26",
        "jaxtyping>=0.2.36",
        "absl-py>=2.1",
        "tqdm>=4.66",
        "tensorboardX>=2.6",
        "matplotlib>=3.8",
        "grain>=0.2.10",
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "pytest-xdist>=3.5",
            "tokenizers>=0.15",  # the BPE tests
            "rdata>=1.0",  # the R lazy-load reader's tests
            # tests/test_data_tfds.py builds and reads a local TFDS dataset offline; these two
            # installed in 33 s on the 2-core machine and the test runs in 11 s, so CI runs it.
            "tensorflow-datasets>=4.9",
            "importlib_resources>=5",
            # tests/test_notebooks.py executes notebooks/ (fails, never skips, without these)
            "nbclient>=0.10",
            "nbformat>=5.9",
            "ipykernel>=6.29",
            # libtpu, for the ahead-of-time TPU compiles (tests/test_compile_tpu.py and the TPU
            # kernel tests): a 213 MB wheel; see docs/tpu.md "In CI" for what it adds to CI.
            "jax[tpu]>=0.10.2",
        ],
        "tpu": ["jax[tpu]>=0.10.2"],
        # importlib_resources: tensorflow-datasets 4.9.10 imports it when building a
        # dataset defined in an installed package but only declares it for Python < 3.9.
        "tfds": ["tensorflow-datasets>=4.9", "importlib_resources>=5"],
        # A locally trained byte-level BPE (tensorcache.data.tokenizers.BPETokenizer).
        "bpe": ["tokenizers>=0.15"],
        "notebook": [
            "nbclient>=0.10",
            "ipykernel>=6.29",
            "jupytext>=1.16",
        ],
        # scripts/install_corpora.py austen: reads the R data package's serialized objects.
        "corpora": ["rdata>=1.0"],
        # Only for converting the reference PyTorch checkpoints.
        "torch": ["torch>=2.3"],
    },
)
