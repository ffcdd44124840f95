"""One decode step of the memory as a Pallas kernel (GPU: Triton lowering).

``ops.memory_step`` is the op (forward only: inference); ``reference`` the pure-jnp form it
equals; ``kernel_gpu`` the kernel: key normalisation, the write of the evicted pair and the
read, one program per ``(batch, head)`` with the state updated in place.
"""
