"""The pure-jnp reference the kernel must equal: the library's streaming attention
(``tensorcache.attention.stream_attention``) for a chunk of one token, called with the op's
argument order: queries ``[B, H, D]`` at position ``pos`` against the cache as it was before
the token (``[B, H, S, D]``, slot positions ``[S]``, -1 empty) and the token's own key/value.
"""

from __future__ import annotations

import jax.numpy as jnp

from tensorcache import attention


def decode_attention(q_BHD, k_cache_BHSD, v_cache_BHSD, slot_pos_S, k_BHD, v_BHD, pos, *, window, num_sinks=0,
                     q_sink_BHD=None):
  chunk = lambda x: None if x is None else x[:, None]  # [B, H, D] -> [B, P=1, H, D]
  out = attention.stream_attention(chunk(q_BHD), k_cache_BHSD, v_cache_BHSD, slot_pos_S, chunk(k_BHD),
                                   chunk(v_BHD), jnp.reshape(pos, (1,)), window, num_sinks, chunk(q_sink_BHD))
  return out[:, 0]
