"""Pallas kernels for Tensor Cache, one folder per kernel.

* ``memory_scan``: the exact eviction-fed memory scan, every write rule, forward and backward
  (GPU: Triton lowering; TPU: Mosaic), used through ``tensorcache.dispatch`` (``Impl.PALLAS``).
* ``decode_attention``: one decode step of streaming L1 attention (GPU: Triton lowering; TPU:
  Mosaic), forward only, used by ``dispatch.l1_stream`` for one-token chunks (``Impl.AUTO`` on
  GPU, ``Impl.PALLAS`` on every platform).
* ``memory_step``: one decode step of the memory (key normalisation, write, read; GPU: Triton
  lowering; TPU: Mosaic), used by ``dispatch.l2_step`` under ``Impl.PALLAS`` (on GPU it
  measured no faster than XLA).

The two decode kernels run forward only; ``common.with_reference_grad`` gives each op its
reference's gradient, so a differentiated program that holds one still compiles.

Each folder holds ``reference.py`` (the pure-jnp reference the kernel must equal), its
kernels (``kernel_gpu.py``, ``kernel_tpu.py`` where there is one), ``ops.py`` (the op: the
``custom_vjp``, the backend choice) and ``README.md``. Kernels import only ``jax``, their own
folder and ``common.py`` (the Triton parameters, the reference-gradient wrapper); a
``reference.py`` calls the library's pure maths (``tensorcache.memory``,
``tensorcache.attention``) rather than copying it.
"""
