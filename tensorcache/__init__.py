"""Tensor Cache (JAX/Flax): sliding-window attention plus an evicted-pair associative memory.

The public API is exported from here as the library modules land.
"""
