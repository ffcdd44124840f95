"""Pallas kernels for Tensor Cache, one folder per kernel.

* ``memory_scan``: the exact eviction-fed memory scan, every write rule, forward and backward
  (GPU: Triton lowering; TPU: Mosaic), used through ``tensorcache.dispatch`` (``Impl.PALLAS``).
* ``decode_attention``: one decode step of streaming L1 attention (GPU: Triton lowering),
  forward only, used by ``dispatch.l1_stream`` for one-token chunks (``Impl.AUTO`` on GPU).
* ``memory_step``: one decode step of the memory (key normalisation, write, read; GPU: Triton
  lowering), forward only, used by ``dispatch.l2_step`` (``Impl.AUTO`` on GPU).

Each folder holds ``reference.py`` (the pure-jnp reference the kernel must equal), its
kernels (``kernel_gpu.py``, ``kernel_tpu.py`` where there is one), ``ops.py`` (the op: the
``custom_vjp`` where it has a gradient, the backend choice) and ``README.md``. Kernels
import only ``jax`` and their own folder; a ``reference.py`` calls the library's pure maths
(``tensorcache.memory``, ``tensorcache.attention``) rather than copying it.
"""
