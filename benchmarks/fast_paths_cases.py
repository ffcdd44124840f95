"""The cases of the fast-path benchmark; ``fast_paths.py`` runs one group per process.

Not run by hand (the command is in ``fast_paths.py``). Each group appends one JSON line per
case to ``--result`` as soon as the case is done, so a timeout loses only the case in flight:

  python benchmarks/fast_paths_cases.py --case micro --sections l1,memory,tc_attention --result R
  python benchmarks/fast_paths_cases.py --case train --arm tc_delta --result R
  python benchmarks/fast_paths_cases.py --case prefill --length 65536 --result R
  python benchmarks/fast_paths_cases.py --case decode --result R

Timing: compile ahead of time (``jit(...).lower(...).compile()``, excluded), warm up, then
the median of up to ``--iters`` runs, each waited on with ``jax.block_until_ready``, inputs
rotated between two random sets (never zeros); a case stops early once it has run
``--max_case_s`` seconds (at least three runs, or one for a run longer than that). A training
arm's rate is ``--train_steps`` steps run back to back as the trainer runs them (``pipelined``);
its blocked median is reported beside it. Ratios are
to the baseline timed in the same process. Imports only the core library (no ml_collections,
grain, tensorboardX: the meta line lists any that got imported).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import platform
import statistics
import sys
import time
import traceback

import jax
import jax.numpy as jnp
import numpy as np
import optax

import fast_paths
from tensorcache import dispatch, inference, mechanisms
from tensorcache.config import ModelConfig
from tensorcache.model import GPT

f32, bf16 = jnp.float32, jnp.bfloat16
RULES = ("outer", "delta", "wedge")
# The memory section's arms (rule, impl): each rule as dispatched, and the delta rule's
# XLA form (states by the associative scan of chunk maps) beside its GPU state-pass kernel.
MEMORY_ARMS = (("outer", "auto"), ("delta", "auto"), ("delta", "xla"), ("wedge", "auto"))
FORBIDDEN = ("ml_collections", "grain", "tensorboardX", "array_record")


# ------------------------------------------------------------------ reporting


class Emitter:
  """Appends one JSON line per record to the result file and prints a one-line summary."""

  def __init__(self, path: str):
    self.path = path

  def __call__(self, **record) -> None:
    with open(self.path, "a") as f:
      f.write(json.dumps(record, default=float) + "\n")
    brief = {k: v for k, v in record.items() if k not in ("times_ms", "traceback")}
    print(f"  {json.dumps(brief, default=float)[:300]}", flush=True)

  def error(self, section: str, case: str, exc: BaseException) -> None:
    self(kind="error", section=section, case=case, error=f"{type(exc).__name__}: {exc}"[:2000],
         traceback=traceback.format_exc()[-4000:])


def meta() -> dict:
  dev = jax.devices()[0]
  return {"kind": "meta", "device": getattr(dev, "device_kind", str(dev)), "platform": dev.platform,
          "n_devices": jax.device_count(), "jax_version": jax.__version__,
          "jaxlib_version": _jaxlib_version(),
          "python": platform.python_version(),
          "forbidden_imports": [m for m in FORBIDDEN if m in sys.modules]}


def _jaxlib_version():
  try:
    import jaxlib  # pylint: disable=import-outside-toplevel
    return jaxlib.__version__
  except ImportError:
    return None


def device_peak() -> int | None:
  """The device's process-wide ``peak_bytes_in_use`` (None where unsupported, e.g. CPU)."""
  stats = jax.local_devices()[0].memory_stats()
  return None if not stats else stats.get("peak_bytes_in_use")


# ------------------------------------------------------------------ timing


def compile_fn(fn, *args, donate=()):
  """AOT-compiles ``fn`` for ``args``: the executable and its compile time and memory figure."""
  t0 = time.perf_counter()
  compiled = jax.jit(fn, donate_argnums=donate).lower(*args).compile()
  return compiled, {"compile_s": round(time.perf_counter() - t0, 2), **memory_analysis(compiled)}


def memory_analysis(compiled) -> dict:
  try:
    m = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except  (not every backend implements it)
    return {}
  if m is None:
    return {}
  get = lambda name: int(getattr(m, f"{name}_size_in_bytes", 0) or 0)
  out = {"mem_temp_bytes": get("temp"), "mem_argument_bytes": get("argument"), "mem_output_bytes": get("output")}
  out["mem_compiled_bytes"] = get("argument") + get("output") + get("temp") - get("alias")
  return out


def bench(run, warmup: int, iters: int, max_s: float):
  """Median wall time of ``run(i)`` waited on; returns (stats, last output).

  A warm-up longer than ``max_s / 3`` ends the warm-up; timing stops past ``max_s`` once
  three runs are in (or past ``3 * max_s`` with one).
  """
  out = None
  for i in range(warmup):
    t0 = time.perf_counter()
    out = jax.block_until_ready(run(i))
    if time.perf_counter() - t0 > max_s / 3:
      break
  times = []
  start = time.perf_counter()
  for i in range(iters):
    t0 = time.perf_counter()
    out = jax.block_until_ready(run(warmup + i))
    times.append(time.perf_counter() - t0)
    spent = time.perf_counter() - start
    if (spent > max_s and len(times) >= 3) or spent > 3 * max_s:
      break
  ms = [1e3 * t for t in times]
  return {"ms": statistics.median(ms), "n": len(ms), "ms_min": min(ms), "ms_max": max(ms)}, out


def timed(fn, arg_sets, opts, donate=()):
  """Compiles ``fn`` on the first argument set and times it rotating the sets."""
  compiled, info = compile_fn(fn, *arg_sets[0], donate=donate)
  stats, _ = bench(lambda i: compiled(*arg_sets[i % len(arg_sets)]), opts.warmup, opts.iters, opts.max_case_s)
  return compiled, {**stats, **info}


# ------------------------------------------------------------------ inputs and helpers


def normal(key, shape, dtype):
  return jax.random.normal(key, shape, f32).astype(dtype)


def qkv_sets(seed: int, shape, dtype, n_sets: int = 2):
  """``n_sets`` tuples (q, k, v, cotangent) of standard normals."""
  sets = []
  for s in range(n_sets):
    keys = jax.random.split(jax.random.PRNGKey(1000 * seed + s), 4)
    sets.append(tuple(normal(k, shape, dtype) for k in keys))
  return sets


def memory_params(seed: int, H: int) -> mechanisms.MemoryParams:
  """log lam = log U(0.9, 0.999), eta = U(0.02, 0.2), per head."""
  k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
  lam = jax.random.uniform(k1, (H,), f32, 0.9, 0.999)
  return mechanisms.MemoryParams(jnp.log(lam), jax.random.uniform(k2, (H,), f32, 0.02, 0.2))


def with_cotangent(f, argnums):
  """Gradient of ``sum(f(*xs) * ct)`` w.r.t. ``argnums``; ``ct`` is the last argument."""

  def loss(*args):
    *xs, ct = args
    return jnp.sum(f(*xs).astype(f32) * ct.astype(f32))

  return jax.grad(loss, argnums=argnums)


def max_rel_err(a, b) -> float:
  """max |a - b| / max |b| over matching leaves (the largest over the leaves)."""
  errs = []
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    errs.append(float(np.max(np.abs(x - y)) / max(np.max(np.abs(y)), 1e-30)))
  return max(errs)


def window_sum(T: int, W: int) -> int:
  """``sum_t min(t + 1, W)`` over ``t < T``: query-key pairs of a causal window."""
  W = min(W, T)
  return W * (W + 1) // 2 + (T - W) * W


def attention_flops(B, T, H, D, W) -> float:
  """Forward FLOPs of windowed attention (PERFORMANCE.md convention; backward = 2.5x)."""
  return 4.0 * B * H * D * window_sum(T, W)


def baseline_name() -> str:
  return "cudnn" if jax.default_backend() == "gpu" else "sdpa_xla"


def sdpa(W: int):
  """The baseline: ``jax.nn.dot_product_attention`` with a causal window of ``W`` keys
  (cuDNN on GPU; its XLA implementation elsewhere, for the smoke run)."""
  impl = "cudnn" if jax.default_backend() == "gpu" else "xla"
  return lambda q, k, v: jax.nn.dot_product_attention(
      q, k, v, is_causal=True, local_window_size=(W - 1, 0), implementation=impl)


# ------------------------------------------------------------------ copy bandwidth


def run_copy(S, opts, emit) -> float:
  """Bytes read + written per second of a device elementwise copy (TB/s)."""
  n = S.copy_bytes // 4
  sets = [(normal(jax.random.PRNGKey(s), (n,), f32),) for s in range(2)]
  _, stats = timed(lambda x: x * -1.0, sets, opts)
  tbps = 2 * n * 4 / (stats["ms"] * 1e-3) / 1e12
  emit(kind="copy", section="memory", case=f"device copy {S.copy_bytes / 2**30:.2f} GiB", tbps=tbps, **stats)
  return tbps


# ------------------------------------------------------------------ L1


def l1_impls(W: int):
  """(name, fn) pairs, the baseline first."""
  impls = [(baseline_name(), sdpa(W))]
  for impl in ("xla", "auto"):
    impls.append((impl, lambda q, k, v, impl=impl: dispatch.l1_attention(q, k, v, window=W, impl=impl)))
  return impls


def run_l1(S, opts, emit) -> None:
  H, D = S.l1_shape
  sets = qkv_sets(1, (S.B, S.T, H, D), bf16)
  for W in S.l1_windows:
    fwd_flops = attention_flops(S.B, S.T, H, D, W)
    outs = {}
    for mode, flops in (("fwd", fwd_flops), ("fwdbwd", 3.5 * fwd_flops)):
      base_ms = None
      for name, f in l1_impls(W):
        case = f"W{W} {mode} {name}"
        try:
          fn, args = (f, [s[:3] for s in sets]) if mode == "fwd" else (with_cotangent(f, (0, 1, 2)), sets)
          compiled, stats = timed(fn, args, opts)
          outs[(mode, name)] = compiled(*args[0])
          base_ms = stats["ms"] if name == baseline_name() else base_ms
          emit(section="l1", case=case, W=W, mode=mode, impl=name, baseline=baseline_name(), flops=flops,
               tflops=flops / (stats["ms"] * 1e-3) / 1e12, ratio=base_ms and stats["ms"] / base_ms,
               floor_ratio=stats["ms"] * 1e-3 / l1_floor_s(S.B * S.T * H * D, flops, mode), **stats)
        except Exception as e:  # pylint: disable=broad-except
          emit.error("l1", case, e)
    l1_checks(W, outs, emit)


def l1_floor_s(n_elements: int, flops: float, mode: str) -> float:
  """The larger of the FLOP floor and the byte floor: bf16 arrays of ``n_elements`` moved
  once (fwd: q, k, v read, o written; fwd+bwd adds q, k, v, do read and dq, dk, dv written)."""
  n_arrays = 4 if mode == "fwd" else 11
  return max(flops / (fast_paths.PEAK_TFLOPS * 1e12), n_arrays * n_elements * 2 / (fast_paths.NOMINAL_TBPS * 1e12))


def l1_checks(W, outs, emit) -> None:
  base = baseline_name()
  for impl in ("xla", "auto"):
    if all((m, n) in outs for m in ("fwd", "fwdbwd") for n in (impl, base)):
      emit(kind="check", section="l1", case=f"W{W} {impl} vs {base} (bf16, fwd/bwd)", W=W, impl=impl,
           fwd_err=max_rel_err(outs[("fwd", impl)], outs[("fwd", base)]),
           bwd_err=max_rel_err(outs[("fwdbwd", impl)], outs[("fwdbwd", base)]))


# ------------------------------------------------------------------ memory path (L2)


def tc_config(H, D, W, rule, dtype="bfloat16", impl="auto") -> ModelConfig:
  return ModelConfig(mechanism="tc", n_head=H, d_model=H * D, window=W, rule=rule, dtype=dtype, impl=impl)


def memory_fn(cfg: ModelConfig):
  return lambda q, k, v, mp: mechanisms.tc_parallel(q, k, v, mp, cfg)[0]


def run_memory(S, opts, emit, copy_tbps: float) -> None:
  for H, D in S.mem_shapes:
    sets = [s[:3] + (memory_params(7 + i, H), s[3]) for i, s in enumerate(qkv_sets(2, (S.B, S.T, H, D), bf16))]
    array_bytes = S.B * S.T * H * D * 2  # one bf16 [B, T, H, D] array
    fwdbwd_ms = {}
    for rule, impl in MEMORY_ARMS:
      fwd_ms = None
      arm = rule if impl == "auto" else f"{rule} ({impl})"
      for mode in ("fwd", "fwdbwd"):
        case = f"H{H} D{D} {arm} {mode}"
        try:
          stats = memory_case(S, H, D, rule, impl, mode, sets, opts)
          fwd_ms = stats["ms"] if mode == "fwd" else fwd_ms
          fwdbwd_ms[arm] = stats["ms"] if mode == "fwdbwd" else fwdbwd_ms.get(arm)
          emit(**memory_record(case, H, D, rule, mode, stats, fwd_ms, array_bytes, copy_tbps))
        except Exception as e:  # pylint: disable=broad-except
          emit.error("memory", case, e)
    if fwdbwd_ms.get("delta") and fwdbwd_ms.get("outer"):
      emit(kind="delta_vs_outer", section="memory", case=f"H{H} D{D} delta/outer fwd+bwd", H=H, D=D,
           ratio=fwdbwd_ms["delta"] / fwdbwd_ms["outer"])
  memory_checks(S, emit)


def memory_case(S, H, D, rule, impl, mode, sets, opts) -> dict:
  f = memory_fn(tc_config(H, D, S.mem_window, rule, impl=impl))
  if mode == "fwd":
    return timed(f, [s[:4] for s in sets], opts)[1]
  return timed(with_cotangent(f, (0, 1, 2, 3)), sets, opts)[1]


def memory_record(case, H, D, rule, mode, stats, fwd_ms, array_bytes, copy_tbps) -> dict:
  """Compulsory bytes: fwd reads q, k, v and writes r (4 arrays); the backward reads q, k, v
  and dr and writes dq, dk, dv (7 arrays); fwd+bwd counts both (11)."""
  n_arrays = 4 if mode == "fwd" else 11
  nbytes = n_arrays * array_bytes
  tbps = nbytes / (stats["ms"] * 1e-3) / 1e12
  rec = dict(section="memory", case=case, H=H, D=D, rule=rule, mode=mode, bytes=nbytes, tbps=tbps,
             frac_copy=tbps / copy_tbps, frac_nominal=tbps / fast_paths.NOMINAL_TBPS,
             floor_ratio=tbps and fast_paths.NOMINAL_TBPS / tbps, copy_tbps=copy_tbps, **stats)
  if mode == "fwdbwd" and fwd_ms is not None and stats["ms"] > fwd_ms:
    bwd_ms = stats["ms"] - fwd_ms
    bwd_tbps = 7 * array_bytes / (bwd_ms * 1e-3) / 1e12
    rec.update(bwd_ms=bwd_ms, bwd_tbps=bwd_tbps, bwd_frac_copy=bwd_tbps / copy_tbps,
               bwd_frac_nominal=bwd_tbps / fast_paths.NOMINAL_TBPS)
  return rec


def memory_checks(S, emit) -> None:
  """The chunked forms against the per-token recurrence (``impl="reference"``), float32,
  highest matmul precision (so TF32 does not blur the comparison), outputs and gradients."""
  H, D = S.mem_shapes[0]
  q, k, v, ct = qkv_sets(3, (1, S.mem_check_T, H, D), f32, n_sets=1)[0]
  mp = memory_params(11, H)
  for rule in RULES:
    case = f"{rule} auto vs reference T{S.mem_check_T} f32 (fwd/bwd)"
    try:
      with jax.default_matmul_precision("highest"):
        res = {}
        for impl in ("auto", "reference"):
          f = memory_fn(tc_config(H, D, S.mem_window, rule, "float32", impl))
          res[impl] = (jax.jit(f)(q, k, v, mp), jax.jit(with_cotangent(f, (0, 1, 2, 3)))(q, k, v, mp, ct))
      emit(kind="check", section="memory", case=case, rule=rule, T=S.mem_check_T,
           fwd_err=max_rel_err(res["auto"][0], res["reference"][0]),
           bwd_err=max_rel_err(res["auto"][1], res["reference"][1]))
    except Exception as e:  # pylint: disable=broad-except
      emit.error("memory", case, e)


# ------------------------------------------------------------------ whole Tensor Cache attention


def tc_attention_fn(cfg: ModelConfig):
  """L1 + the L2 read (the gate and the projections are out of scope)."""

  def f(q, k, v, mp):
    return mechanisms.l1_parallel(q, k, v, cfg).astype(f32) + mechanisms.tc_parallel(q, k, v, mp, cfg)[0]

  return f


def run_tc_attention(S, opts, emit) -> None:
  H, D = S.l1_shape
  sets = qkv_sets(4, (S.B, S.T, H, D), bf16)
  mps = [memory_params(21 + i, H) for i in range(len(sets))]
  for W in S.tc_windows:
    base_ms = None
    arms = [(baseline_name(), with_cotangent(sdpa(W), (0, 1, 2)), sets)]
    arms += [(f"tc {rule}", with_cotangent(tc_attention_fn(tc_config(H, D, W, rule)), (0, 1, 2, 3)),
              [s[:3] + (mp, s[3]) for s, mp in zip(sets, mps)]) for rule in opts.tc_rules]
    for name, fn, args in arms:
      case = f"W{W} fwd+bwd {name}"
      try:
        _, stats = timed(fn, args, opts)
        base_ms = stats["ms"] if name == baseline_name() else base_ms
        emit(section="tc_attention", case=case, W=W, impl=name, baseline=baseline_name(),
             ratio=base_ms and stats["ms"] / base_ms, **stats)
      except Exception as e:  # pylint: disable=broad-except
        emit.error("tc_attention", case, e)


# ------------------------------------------------------------------ GPT-124M training step

ARMS = {"window": ("window", "delta"), "full": ("full", "delta"), "tc_outer": ("tc", "outer"),
        "tc_delta": ("tc", "delta"), "tc_delta_remat": ("tc", "delta"), "gpt2_b32": ("tc", "delta")}


def gpt_config(S, mechanism, rule, window, max_len, remat="none") -> ModelConfig:
  return ModelConfig(vocab_size=S.vocab, n_layer=S.n_layer, n_head=S.n_head, d_model=S.d_model,
                     window=window, dtype="bfloat16", mechanism=mechanism, rule=rule, max_len=max_len,
                     train_window=True, remat=remat)


def init_params(model: GPT, seed: int = 0):
  tokens = jnp.zeros((1, 8), jnp.int32) + 1
  return jax.jit(model.init)(jax.random.PRNGKey(seed), tokens)


def train_step_fn(model: GPT, tx):
  def loss_fn(params, tokens):
    logits = model.apply(params, tokens[:, :-1])
    return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()

  def step(params, opt_state, tokens):
    loss, grads = jax.value_and_grad(loss_fn)(params, tokens)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  return step


def train_flops(S, cfg: ModelConfig, n_params: int) -> float:
  """6 N per token plus windowed attention fwd+bwd per layer (fast_paths.provenance)."""
  W = S.train_T if cfg.mechanism == "full" else cfg.window
  attn = 3.5 * attention_flops(S.train_B, S.train_T, cfg.n_head, cfg.head_dim, W) * cfg.n_layer
  return 6.0 * n_params * S.train_B * S.train_T + attn


def train_setup(S, arm: str):
  """A training arm's sizes, config, model, optimiser, two token batches and initial state
  ``[params, opt_state]`` (the benchmark's and ``profile_kernels.py``'s)."""
  mechanism, rule = ARMS[arm]
  if arm == "gpt2_b32":  # the gpt2 preset at its default batch (32) and byte vocabulary
    S = dataclasses.replace(S, train_B=4 * S.train_B, vocab=256)
  cfg = gpt_config(S, mechanism, rule, S.train_W, S.train_T, "memory" if arm.endswith("_remat") else "none")
  model = GPT(cfg)
  batches = [jax.random.randint(jax.random.PRNGKey(31 + i), (S.train_B, S.train_T + 1), 0, S.vocab)
             for i in range(2)]
  params = init_params(model)
  tx = optax.adamw(3e-4, b1=0.9, b2=0.95, weight_decay=0.1)
  return S, cfg, model, tx, batches, [params, jax.jit(tx.init)(params)]


def run_train(S, opts, arm: str, emit) -> None:
  mechanism, rule = ARMS[arm]
  S, cfg, model, tx, batches, state = train_setup(S, arm)
  n_params = sum(x.size for x in jax.tree.leaves(state[0]))
  compiled, info = compile_fn(train_step_fn(model, tx), *state, batches[0], donate=(0, 1))
  losses = []

  def run(i):
    state[0], state[1], loss = compiled(state[0], state[1], batches[i % 2])
    losses.append(loss)
    return loss

  blocked, _ = bench(run, opts.warmup, opts.iters, opts.max_case_s)
  stats = pipelined(run, opts.train_steps)
  losses = [float(x) for x in losses]
  tokens = S.train_B * S.train_T
  flops = train_flops(S, cfg, n_params)
  emit(section="train", case=arm, arm=arm, mechanism=mechanism, rule=rule if mechanism == "tc" else None,
       remat=cfg.remat, n_params=n_params, tokens_per_step=tokens, tok_s=tokens / (stats["ms"] * 1e-3),
       flops_per_step=flops, mfu=flops / (stats["ms"] * 1e-3) / (fast_paths.PEAK_TFLOPS * 1e12),
       ms_blocked=blocked["ms"], n_blocked=blocked["n"], tok_s_blocked=tokens / (blocked["ms"] * 1e-3),
       loss_first=losses[0], loss_last=losses[-1], loss_finite=all(map(math.isfinite, losses)),
       peak_bytes=device_peak(), **stats, **info)


def pipelined(run, steps: int) -> dict:
  """Milliseconds per step of ``steps`` steps run as the trainer runs them
  (``tensorcache.train``): step ``i + 1`` is dispatched before step ``i``'s loss is waited
  on, so the host's dispatch of a step overlaps the device's work on the one before. A step
  waited on alone (``bench``, reported as ``ms_blocked``) also pays that dispatch."""
  prev = jax.block_until_ready(run(0))
  t0 = time.perf_counter()
  for i in range(1, steps + 1):
    out = run(i)
    jax.block_until_ready(prev)
    prev = out
  jax.block_until_ready(prev)
  return {"ms": (time.perf_counter() - t0) * 1e3 / steps, "n": steps, "timing": "pipelined"}


# ------------------------------------------------------------------ streaming: prefill, decode


def stream_model(S):
  cfg = gpt_config(S, "tc", "delta", S.stream_W, max(S.train_T, S.stream_W))
  model = GPT(cfg)
  return cfg, model, init_params(model)


def run_prefill(S, opts, length: int, emit) -> None:
  """``inference.prefill`` (last logits only) inside one jit, one length per process. The
  empty cache is an argument, donated (made outside the jit, as ``prefill`` makes it: inside,
  it would be a constant that XLA folds into the first chunk); each run gets a fresh one,
  made in the timed region (a few small device arrays)."""
  cfg, model, params = stream_model(S)
  chunk = opts.prefill_chunk or S.prefill_chunk
  longest = length >= S.prefill_lengths[-1]
  n_sets = 1 if longest else 2
  token_sets = [jax.random.randint(jax.random.PRNGKey(41 + i), (1, length), 0, S.vocab) for i in range(n_sets)]
  fn = lambda p, c, t: inference.prefill(model, p, t, c, chunk=chunk)
  compiled, info = compile_fn(fn, params, inference.init_cache(cfg, 1), token_sets[0], donate=(1,))
  warmup, iters = (0, 1) if longest else (1, min(opts.iters, 5))
  run = lambda i: compiled(params, inference.init_cache(cfg, 1), token_sets[i % n_sets])
  stats, (logits, _) = bench(run, warmup, iters, opts.max_case_s)
  emit(section="prefill", case=f"{fast_paths.tokens_name(length)} tokens", length=length, chunk=chunk,
       tok_s=length / (stats["ms"] * 1e-3), finite=bool(jnp.isfinite(logits).all()),
       peak_bytes=device_peak(), single_run=longest, **stats, **info)


def run_decode(S, opts, emit) -> None:
  cfg, model, params = stream_model(S)
  P = S.decode_prompt
  for B in S.decode_batches:
    prompts = [jax.random.randint(jax.random.PRNGKey(51 + i), (B, P), 0, S.vocab) for i in range(2)]
    try:
      decode_generate(S, model, params, prompts, opts, emit)
    except Exception as e:  # pylint: disable=broad-except
      emit.error("decode", f"b{B} generate", e)
    try:
      decode_steps(S, cfg, model, params, prompts[0], emit)
    except Exception as e:  # pylint: disable=broad-except
      emit.error("decode", f"b{B} decode_step loop", e)
  emit(kind="peak", section="decode", case="process peak", peak_bytes=device_peak())


def decode_generate(S, model, params, prompts, opts, emit) -> None:
  """``inference.generate``, greedy: prefill of a short prompt and the loop in one jit."""
  B, P = prompts[0].shape
  gen = lambda i: inference.generate(model, params, prompts[i % 2], S.decode_new, temperature=0.0,
                                     prefill_chunk=P)
  t0 = time.perf_counter()
  jax.block_until_ready(gen(0))
  compile_s = time.perf_counter() - t0
  stats, out = bench(gen, 1, min(opts.iters, 5), opts.max_case_s)
  out = np.asarray(out)
  valid = out.shape == (B, P + S.decode_new) and out.min() >= 0 and out.max() < S.vocab
  emit(section="decode", case=f"b{B} generate ({P}+{S.decode_new})", mode="generate", batch=B,
       prompt=P, new_tokens=S.decode_new, tok_s=B * S.decode_new / (stats["ms"] * 1e-3), valid=bool(valid),
       first_call_s=round(compile_s, 2), **stats)


def decode_steps(S, cfg, model, params, prompt, emit) -> None:
  """``inference.decode_step`` called from Python once per token (greedy): the prompt is fed
  step by step (one compiled program for all of it), then ``S.decode_steps`` steps are timed:
  one dispatch from Python per token, which ``generate``'s single jit avoids. The weights are
  cast to the compute dtype once before the loop (``inference.compute_params``; runs 9 and
  earlier cast them every step)."""
  B, P = prompt.shape
  params = inference.compute_params(cfg, params)
  cache = inference.init_cache(cfg, B)
  for t in range(P):
    logits, cache = inference.decode_step(model, params, cache, prompt[:, t])
  jax.block_until_ready(logits)
  n = S.decode_steps
  t0 = time.perf_counter()
  for _ in range(n):
    logits, cache = inference.decode_step(model, params, cache, jnp.argmax(logits, -1).astype(jnp.int32))
  jax.block_until_ready(logits)
  ms = (time.perf_counter() - t0) * 1e3 / n
  emit(section="decode", case=f"b{B} decode_step loop ({n} steps)", mode="step_loop", batch=B, steps=n,
       ms=ms, tok_s=B / (ms * 1e-3), finite=bool(jnp.isfinite(logits).all()))


# ------------------------------------------------------------------ main


def run_micro(S, opts, emit) -> None:
  sections = opts.sections.split(",")
  if "l1" in sections:
    run_l1(S, opts, emit)
  if "memory" in sections:
    copy_tbps = run_copy(S, opts, emit)
    run_memory(S, opts, emit, copy_tbps)
  if "tc_attention" in sections:
    run_tc_attention(S, opts, emit)


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--case", required=True, choices=("micro", "train", "prefill", "decode"))
  p.add_argument("--result", required=True)
  p.add_argument("--sections", default="l1,memory,tc_attention")
  p.add_argument("--arm", choices=tuple(ARMS), default="tc_delta")
  p.add_argument("--length", type=int, default=0)
  p.add_argument("--quick", action="store_true")
  p.add_argument("--warmup", type=int, default=2)
  p.add_argument("--iters", type=int, default=15)
  p.add_argument("--max_case_s", type=float, default=3.0)
  p.add_argument("--train_steps", type=int, default=30)
  p.add_argument("--tc_rules", default="delta")
  p.add_argument("--prefill_chunk", type=int, default=0)
  opts = p.parse_args(argv)
  opts.tc_rules = [r for r in opts.tc_rules.split(",") if r]
  return opts


def main(argv=None) -> int:
  opts = parse_args(argv)
  S = fast_paths.sizes(opts.quick)
  emit = Emitter(opts.result)
  emit(**meta())
  section = opts.sections.split(",")[0] if opts.case == "micro" else opts.case
  try:
    if opts.case == "micro":
      run_micro(S, opts, emit)
    elif opts.case == "train":
      run_train(S, opts, opts.arm, emit)
    elif opts.case == "prefill":
      run_prefill(S, opts, opts.length, emit)
    else:
      run_decode(S, opts, emit)
  except Exception as e:  # pylint: disable=broad-except
    case = {"train": opts.arm, "prefill": f"{fast_paths.tokens_name(opts.length)} tokens"}.get(opts.case, opts.case)
    emit.error(section, case, e)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
