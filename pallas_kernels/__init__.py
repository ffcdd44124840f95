"""Pallas kernels for Tensor Cache; empty until later work adds them.

One folder per kernel: ``reference.py`` (pure-jnp reference), ``kernel_gpu.py``,
``kernel_tpu.py``, ``ops.py`` (``custom_vjp`` and dispatch) and ``README.md``. Kernels
import only ``jax`` and their own reference, never ``tensorcache``.
"""
