"""One decode step of streaming L1 attention as a Pallas kernel (GPU: Triton lowering).

``ops.decode_attention`` is the op (forward only: inference); ``reference`` the pure-jnp form
it equals; ``kernel_gpu`` the kernel, which returns per-split partial softmax sums that
``ops`` combines with the new token's own key.
"""
