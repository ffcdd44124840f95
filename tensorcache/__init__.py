"""Tensor Cache (JAX/Flax): sliding-window attention plus an evicted-pair associative memory."""

from tensorcache import convert, inference
from tensorcache.config import ModelConfig
from tensorcache.dispatch import Impl
from tensorcache.model import GPT

__all__ = ["GPT", "Impl", "ModelConfig", "convert", "inference"]
