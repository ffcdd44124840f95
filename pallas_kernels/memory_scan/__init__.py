"""The exact eviction-fed memory scan as Pallas kernels (GPU: Triton lowering; TPU: Mosaic).

``ops.memory_scan`` is the op (``custom_vjp``, forward and backward kernels); ``reference``
the pure-jnp forms it equals; ``chunk`` the per-chunk maths both kernels run.
"""
