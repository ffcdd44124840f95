"""Tensor Cache (JAX/Flax): sliding-window attention plus an evicted-pair associative memory.

Entry points run with ``python -m`` (``demo``, ``convert``) are not imported here.
"""

from tensorcache import inference
from tensorcache.config import ModelConfig
from tensorcache.dispatch import Impl
from tensorcache.model import GPT

__all__ = ["GPT", "Impl", "ModelConfig", "inference"]
