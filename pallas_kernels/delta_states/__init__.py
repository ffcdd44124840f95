"""The delta rule's state pass over chunks (the serial half of its chunked form) as a Pallas
kernel: ``reference.py`` (a ``lax.scan``), ``kernel_gpu.py`` (Triton), ``ops.py`` (the op)."""
