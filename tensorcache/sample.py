"""Sample from a checkpoint, streaming the prompt and the new tokens through the cache.

``python -m tensorcache.sample --workdir=/tmp/run --prompt="def main(" --max_tokens=200
--temperature=0.8 --top_k=40`` (``--temperature=0`` is greedy). Prefill and the sampling
loop run inside one ``jit`` (``inference.generate``).
"""

from __future__ import annotations

import jax
import numpy as np
from absl import flags

from tensorcache import checkpoint, cli, inference
from tensorcache.data import get_tokenizer
from tensorcache.model import GPT


def sample_text(workdir: str, prompt: str, max_tokens: int, *, temperature: float, top_k: int | None,
                seed: int = 0, num_samples: int = 1, tokenizer=None) -> list[str]:
  """Decoded continuations of ``prompt`` from the newest usable checkpoint in ``workdir``."""
  cfg, params, _ = checkpoint.load_model(workdir)
  tokenizer = tokenizer or get_tokenizer("byte")
  ids = np.asarray(tokenizer.encode(prompt), np.int32)
  if ids.size == 0:
    raise ValueError("the prompt encodes to no tokens; give at least one character.")
  prompt_ids = np.tile(ids[None], (num_samples, 1))
  out = inference.generate(GPT(cfg), params, prompt_ids, max_tokens, jax.random.PRNGKey(seed),
                           temperature=temperature, top_k=top_k)
  return [tokenizer.decode(np.asarray(row[ids.size:])) for row in out]


def _define_flags() -> None:
  """Command-line flags, defined only when run as a program (importing defines none)."""
  flags.DEFINE_string("workdir", None, "Directory holding the checkpoint (train or convert output).", required=True)
  flags.DEFINE_string("prompt", "\n", "Prompt text.")
  flags.DEFINE_integer("max_tokens", 200, "Tokens to generate.")
  flags.DEFINE_float("temperature", 0.8, "Softmax temperature; 0 is greedy.")
  flags.DEFINE_integer("top_k", None, "Sample among the k most likely tokens.")
  flags.DEFINE_integer("seed", 0, "Sampling seed.")
  flags.DEFINE_integer("num_samples", 1, "Independent samples (a batch).")
  flags.DEFINE_string("tokenizer", "byte", "Tokenizer: 'byte' or 'bpe'.")
  flags.DEFINE_string("tokenizer_path", None, "Saved BPE tokenizer file (for --tokenizer=bpe).")


def main(argv):
  del argv
  f = flags.FLAGS
  tokenizer = get_tokenizer(f.tokenizer, f.tokenizer_path)
  texts = sample_text(f.workdir, f.prompt, f.max_tokens, temperature=f.temperature, top_k=f.top_k, seed=f.seed,
                      num_samples=f.num_samples, tokenizer=tokenizer)
  for i, text in enumerate(texts):
    print(f"--- sample {i} ---\n{f.prompt}{text}")


if __name__ == "__main__":
  _define_flags()
  cli.run(main)
