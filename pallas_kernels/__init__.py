"""Pallas kernels for Tensor Cache, one folder per kernel.

* ``memory_scan``: the exact eviction-fed memory scan, every write rule, forward and backward
  (GPU: Triton lowering; TPU: Mosaic), used through ``tensorcache.dispatch`` (``Impl.PALLAS``).

Each folder holds ``reference.py`` (the pure-jnp reference the kernel must equal),
``kernel_gpu.py``, ``kernel_tpu.py``, ``ops.py`` (``custom_vjp`` and the backend choice) and
``README.md``. Kernels import only ``jax`` and their own folder; a ``reference.py`` calls the
library's pure maths (``tensorcache.memory``) rather than copying it.
"""
