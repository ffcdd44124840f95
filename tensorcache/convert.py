"""Load checkpoints of the authors' PyTorch reference (``kswain98/tensor-cache``).

``config_from_reference`` maps the reference's ``GPTConfig`` keys onto ``ModelConfig`` with
the reference-compatible semantics (docs/method.md §6): ``compat='reference'`` (W+1-key training
window, read-then-write streaming, per-token Infini streaming writes) and the
write-on-insert chunk-start training scan. ``params_from_state_dict`` maps its
``state_dict`` names onto our parameter tree. ``torch`` is needed only to read ``.pt`` files.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import numpy as np

from tensorcache.config import ModelConfig

KV_MODES = ("full_kv", "window_kv", "streaming_llm", "infini", "tc")

# Reference keys that change nothing in our model (training-only or implied).
_IGNORED = {"dropout", "block_size", "use_kv_cache", "tc_enabled", "infini_enabled", "tc_read_topk",
            "tc_router_temp", "tc_write_route"}
# Reference keys whose only supported value is the one given.
_FIXED = {"bias": False, "use_rope": True, "tc_num_slots": 1, "tc_write_on_evict": True,
          "tc_write_on_insert": False, "tc_use_in_full_forward": True, "tc_normalize_k": True}
# Reference key -> ModelConfig field.
_RENAMED = {
    "vocab_size": "vocab_size", "n_layer": "n_layer", "n_head": "n_head", "n_embd": "d_model",
    "rope_base": "rope_base", "rope_scaling_factor": "rope_scaling", "tc_update_rule": "rule",
    "tc_chunk_size": "chunk", "tc_layers": "memory_layers", "tc_decay_init": "decay_init",
    "tc_lr_init": "lr_init", "tc_gate_init": "gate_init", "tc_normalize_q": "normalize_q",
    "tc_value_scale": "value_scale", "tc_two_timescales": "two_timescales",
    "tc_decay_slow_init": "decay_slow_init", "tc_lr_slow_init": "lr_slow_init",
    "tc_alpha_init": "alpha_init", "tc_freeze_decay_lr": "freeze_decay_lr",
    "tc_per_token_gate": "per_token_gate", "tc_normalize_read": "normalize_read",
    "tc_normalize_read_eps": "normalize_read_eps", "infini_update_rule": "infini_rule",
    "infini_segment_size": "infini_segment",
}


def infer_kv_mode(ref: Mapping[str, Any]) -> str:
  """The reference's ``apply_kv_mode`` preset that a config corresponds to."""
  if ref.get("infini_enabled"):
    return "infini"
  window = ref.get("kv_window", 512) if ref.get("use_kv_cache", True) else 0
  if window <= 0:
    return "full_kv"
  if ref.get("tc_enabled", True):
    return "tc"
  return "streaming_llm" if ref.get("kv_num_sinks", 0) > 0 else "window_kv"


def config_from_reference(ref: Mapping[str, Any], kv_mode: str | None = None, **overrides) -> ModelConfig:
  """``ModelConfig`` reproducing a reference configuration (its ``model_args`` dict).

  ``kv_mode`` (one of ``KV_MODES``) applies the reference's preset, else it is inferred.
  ``full``, ``window`` and ``sinks`` train dense in the reference (``train_window=False``);
  ``tc`` and ``infini`` train with the window. ``overrides`` set any ``ModelConfig`` field
  (for example ``max_len`` for the full-attention cache, default ``block_size``).
  """
  known = set(_IGNORED) | set(_FIXED) | set(_RENAMED) | {"kv_window", "kv_num_sinks"}
  unknown = sorted(set(ref) - known)
  if unknown:
    raise ValueError(f"Unknown reference config key(s) {unknown}; this converter knows {sorted(known)}.")
  for key, value in _FIXED.items():
    if key in ref and ref[key] != value:
      raise ValueError(f"Unsupported reference setting {key}={ref[key]!r}: only {value!r} is implemented.")
  kv_mode = kv_mode or infer_kv_mode(ref)
  if kv_mode not in KV_MODES:
    raise ValueError(f"Unknown kv_mode {kv_mode!r}; choose one of {KV_MODES}.")
  fields = {ours: ref[theirs] for theirs, ours in _RENAMED.items() if theirs in ref}
  mechanism = {"full_kv": "full", "window_kv": "window", "streaming_llm": "sinks",
               "infini": "infini", "tc": "tc"}[kv_mode]
  sinks = int(ref.get("kv_num_sinks", 0))
  if mechanism in ("window", "tc", "infini") and sinks > 0:
    raise ValueError(
        f"Unsupported reference setting kv_num_sinks={sinks} with kv_mode {kv_mode!r}: sinks are "
        "implemented for streaming_llm only.")
  fields.update(
      mechanism=mechanism, window=int(ref.get("kv_window", 512)), compat="reference",
      train_window=mechanism in ("tc", "infini"), max_len=int(ref.get("block_size", 1024)),
      num_sinks=sinks or 4)  # the reference's streaming_llm preset uses 4
  # Its two-timescale training scan writes chunk means on insert; one timescale, the weighted sum.
  if fields.get("two_timescales"):
    fields.update(memory_mode="chunk_mean", chunk_mean_feed="insert")
  else:
    fields.update(memory_mode="reference")
  if mechanism == "full":
    fields["window"] = 0
  fields.update(overrides)
  return ModelConfig(**fields)


_LINEAR = {"attn.c_attn": ("attn", "c_attn"), "attn.c_proj": ("attn", "c_proj"),
           "attn.tc_proj": ("attn", "tc_proj"), "attn.tc_gate_proj": ("attn", "gate_proj"),
           "mlp.fc": ("mlp", "fc"), "mlp.proj": ("mlp", "proj")}
_VECTORS = {"attn.tc_gate": ("attn", "gate"), "attn.tc.logit_decay_fast": ("attn", "decay_logit"),
            "attn.tc.logit_lr_fast": ("attn", "lr_logit"), "attn.tc.logit_decay_slow": ("attn", "decay_slow_logit"),
            "attn.tc.logit_lr_slow": ("attn", "lr_slow_logit"), "attn.tc.logit_alpha": ("attn", "alpha_logit"),
            "attn.infini.beta": ("attn", "beta"), "ln1.weight": ("ln1", "scale"), "ln2.weight": ("ln2", "scale")}


def params_from_state_dict(state_dict: Mapping[str, Any], cfg: ModelConfig) -> dict:
  """Our ``{'params': ...}`` tree from the reference's ``state_dict`` (numpy or torch arrays).

  A torch ``Linear`` weight ``[out, in]`` becomes a Flax kernel ``[in, out]``; the packed
  ``c_attn`` keeps its q, k, v order and ``[H, D]`` head split. Raises on names it cannot
  place and on parameters our model expects but the checkpoint lacks.
  """
  tree: dict = {}

  def put(path, value):
    node = tree
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = np.asarray(value, np.float32)

  for name, value in state_dict.items():
    name = name.removeprefix("_orig_mod.")
    value = np.asarray(value.detach().cpu().float().numpy() if hasattr(value, "detach") else value)
    if name == "transformer.wte.weight":
      put(("wte", "embedding"), value)
    elif name == "lm_head.weight":
      continue  # tied to the embedding
    elif name == "transformer.ln_f.weight":
      put(("ln_f", "scale"), value)
    elif (m := re.fullmatch(r"transformer\.h\.(\d+)\.(attn\.tc.*)", name)) and not cfg.has_memory(int(m.group(1))):
      continue  # the reference builds memory parameters in every layer; tc_layers leaves these unused
    elif (m := re.fullmatch(r"transformer\.h\.(\d+)\.(.+)\.(weight|bias)", name)) and m.group(2) in _LINEAR:
      layer, mod, kind = m.groups()
      sub = _LINEAR[mod]
      put((f"blocks_{layer}",) + sub + ("kernel" if kind == "weight" else "bias",),
          value.T if kind == "weight" else value)
    elif (m := re.fullmatch(r"transformer\.h\.(\d+)\.(.+)", name)) and m.group(2) in _VECTORS:
      put((f"blocks_{m.group(1)}",) + _VECTORS[m.group(2)], value.reshape(-1))
    else:
      raise ValueError(f"Cannot place reference parameter {name!r} (shape {value.shape}) in our model.")
  if "lm_head.weight" in state_dict and "transformer.wte.weight" in state_dict:
    if not np.array_equal(np.asarray(state_dict["lm_head.weight"]), np.asarray(state_dict["transformer.wte.weight"])):
      raise ValueError("lm_head.weight differs from transformer.wte.weight; our model ties them.")
  _check_against_model(tree, cfg)
  return {"params": tree}


def _check_against_model(tree: dict, cfg: ModelConfig) -> None:
  import jax

  from tensorcache.checkpoint import abstract_params

  expected = abstract_params(cfg)
  want = {jax.tree_util.keystr(p): v.shape for p, v in jax.tree_util.tree_leaves_with_path(expected["params"])}
  got = {jax.tree_util.keystr(p): v.shape for p, v in jax.tree_util.tree_leaves_with_path(tree)}
  if want != got:
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    shapes = sorted(k for k in set(want) & set(got) if want[k] != got[k])
    raise ValueError(
        f"Checkpoint does not fit the config: missing {missing}, unexpected {extra}, "
        f"shape mismatches {[(k, got[k], want[k]) for k in shapes]}.")


def load_torch_checkpoint(path: str, kv_mode: str | None = None, **overrides) -> tuple[ModelConfig, dict]:
  """``(config, params)`` from a reference ``ckpt.pt`` (keys ``model`` and ``model_args``)."""
  try:
    import torch
  except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError("Reading .pt checkpoints needs torch: pip install -e '.[torch]'.") from e
  ckpt = torch.load(path, map_location="cpu", weights_only=True)
  if not isinstance(ckpt, dict) or "model" not in ckpt or "model_args" not in ckpt:
    raise ValueError(f"{path} is not a reference checkpoint: expected a dict with 'model' and 'model_args'.")
  cfg = config_from_reference(ckpt["model_args"], kv_mode, **overrides)
  return cfg, params_from_state_dict(ckpt["model"], cfg)


def load_npz(path: str, kv_mode: str | None = None, **overrides) -> tuple[ModelConfig, dict]:
  """``(config, params)`` from an ``.npz`` holding ``w.<state_dict name>`` arrays and the
  reference configuration as a JSON string under ``config_json``."""
  import json

  with np.load(path) as z:
    if "config_json" not in z.files:
      raise ValueError(f"{path} has no 'config_json' entry with the reference configuration.")
    state_dict = {k[2:]: z[k] for k in z.files if k.startswith("w.")}
    ref = json.loads(str(z["config_json"]))
  cfg = config_from_reference(ref, kv_mode, **overrides)
  return cfg, params_from_state_dict(state_dict, cfg)


def main(argv: list[str] | None = None) -> None:
  """``python -m tensorcache.convert --from-torch ckpt.pt --workdir out/``."""
  import argparse

  from tensorcache import cli

  parser = argparse.ArgumentParser(description="Convert a reference PyTorch checkpoint into an orbax checkpoint.")
  source = parser.add_mutually_exclusive_group(required=True)
  source.add_argument("--from-torch", metavar="CKPT_PT", help="the reference trainer's ckpt.pt")
  source.add_argument("--from-npz", metavar="NPZ", help="w.<name> arrays plus config_json")
  parser.add_argument("--workdir", required=True, help="where to write the checkpoint (evaluate/sample read it)")
  parser.add_argument("--kv-mode", choices=KV_MODES, help="reference preset (default: inferred from the config)")
  parser.add_argument("--max-len", type=int, help="full-attention cache capacity (default: block_size)")
  cli.add_arguments(parser)
  args = parser.parse_args(argv)
  cli.guard(_convert, args.debug, args.verbose, args)


def _convert(args) -> None:
  from tensorcache import checkpoint

  overrides = {} if args.max_len is None else {"max_len": args.max_len}
  if args.from_torch:
    cfg, params = load_torch_checkpoint(args.from_torch, args.kv_mode, **overrides)
  else:
    cfg, params = load_npz(args.from_npz, args.kv_mode, **overrides)
  checkpoint.save_model(args.workdir, cfg, params)
  print(f"wrote {cfg.mechanism} model ({cfg.n_layer}L/{cfg.n_head}H/{cfg.d_model}, compat={cfg.compat}) "
        f"to {args.workdir}/{checkpoint.CHECKPOINT_DIR}")


if __name__ == "__main__":
  main()
