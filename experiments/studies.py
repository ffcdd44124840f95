"""What the runner does with one arm, per ``config.study.kind``: each function takes the arm's
run config and a work directory and returns records (dicts), each naming its ``table`` (the
CSV it goes to).

* ``recall``: train (resuming in the work directory), then greedy answer accuracy per distance
  bin and per number of stored pairs (``evaluate.recall_accuracy``);
* ``lm``: train, then stream held-out windows of each context length and stratify the NLL by
  distance with one W for every mechanism;
* ``capacity``: no model: write random pairs into the memory (``tensorcache.memory``) and
  read them back;
* ``learned``: train (or reuse a run), then per layer and head the learned lambda, eta,
  horizon and gate;
* ``systems``: random weights; prefill, time to first token, decode, memory per prompt length.
"""

from __future__ import annotations

import functools
import math
import os
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from tensorcache import cache as cache_lib
from tensorcache import inference, memory
from tensorcache.config import ModelConfig
from tensorcache.model import GPT

# The training studies import tensorcache.data / evaluate / train where they run, so that the
# systems and capacity studies need only the core library (the GPU machine lacks grain).

f32 = jnp.float32


def _train(config, workdir: str):
  from tensorcache import train

  t0 = time.perf_counter()
  state = train.train(config, workdir)
  return state, time.perf_counter() - t0


def _arm_fields(config) -> dict:
  m = config.model
  return dict(mechanism=m.mechanism, memory_mode=m.memory_mode if m.mechanism == "tc" else "",
              rule=m.rule if m.mechanism == "tc" else "", window=int(m.window), seed=int(config.train.seed))


# ------------------------------------------------------------------ recall


def recall(config, workdir: str) -> list[dict]:
  from tensorcache import evaluate, train

  s = config.study
  state, train_s = _train(config, workdir)
  cfg = train.model_config(config.model)
  base = _arm_fields(config) | dict(train_steps=int(state.step), train_s=round(train_s, 1))
  rows = []
  for r in evaluate.recall_accuracy(cfg, state.params, config.data, seq_len=config.train.seq_len,
                                    num_examples=s.eval_examples, bin_edges=tuple(s.bin_edges)):
    rows.append(base | dict(table="distance", num_pairs=r["num_pairs"], distance_lo_W=r["distance_lo_W"],
                            distance_hi_W=r["distance_hi_W"], answers=r["answers"], accuracy=r["accuracy"]))
  split = evaluate.recall_accuracy(cfg, state.params, config.data, seq_len=config.train.seq_len,
                                   num_examples=s.eval_examples, bin_edges=(0, 1))
  acc = {r["distance_lo_W"]: r for r in split}
  rows.append(base | dict(table="summary", acc_below_W=acc.get(0, {}).get("accuracy", math.nan),
                          answers_below_W=acc.get(0, {}).get("answers", 0),
                          acc_beyond_W=acc.get(1, {}).get("accuracy", math.nan),
                          answers_beyond_W=acc.get(1, {}).get("answers", 0),
                          chance=1.0 / int(config.data.value_vocab)))
  lo, hi = s.pairs_distance
  for n in s.pairs:
    dc = dict(config.data.to_dict(), num_pairs=int(n), distance=int(lo), distance_max=int(hi))
    for r in evaluate.recall_accuracy(cfg, state.params, dc, seq_len=config.train.seq_len,
                                      num_examples=s.eval_examples, bin_edges=(0, 1)):
      if r["distance_lo_W"] == 1:
        rows.append(base | dict(table="pairs", num_pairs=int(n), answers=r["answers"], accuracy=r["accuracy"]))
  return rows


# ------------------------------------------------------------------ language modelling


def distance_bins(nll, weights, window: int, edges) -> list[dict]:
  """Mean NLL per distance bin ``[e_i W, e_{i+1} W)`` (the last bin open-ended)."""
  pos = np.arange(nll.shape[1])[None]
  bounds = list(edges) + [np.inf]
  rows = []
  for lo, hi in zip(bounds[:-1], bounds[1:]):
    w = weights * (pos >= lo * window) * (pos < hi * window)
    if w.sum():
      rows.append(dict(distance_lo_W=lo, distance_hi_W=hi, tokens=int(w.sum()),
                       nll=float((nll * w).sum() / w.sum())))
  return rows


def lm(config, workdir: str) -> list[dict]:
  from tensorcache import data, evaluate, train

  s = config.study
  state, train_s = _train(config, workdir)
  cfg = train.model_config(config.model)
  window = cfg.window if int(s.strata_window) < 0 else int(s.strata_window)
  base = _arm_fields(config) | dict(source=config.data.source, train_len=int(config.train.seq_len),
                                    train_steps=int(state.step), train_s=round(train_s, 1), strata_W=window)
  rows = []
  for length in s.context_lengths:
    fit = cfg.replace(max_len=max(cfg.max_len, length)) if cfg.mechanism == "full" else cfg
    win = data.make_eval_windows(config.data, seq_len=int(length), num_windows=int(s.eval_windows),
                                 min_len=None if int(s.min_len) < 0 else int(s.min_len))
    if win["inputs"].shape[0] == 0:
      rows.append(base | dict(table="nll", context_length=int(length), windows=0))
      continue
    t0 = time.perf_counter()
    logp = evaluate.streaming_logprobs(GPT(fit), state.params, win["inputs"], win["targets"],
                                       chunk=min(int(s.eval_chunk), int(length)))
    seconds = time.perf_counter() - t0
    nll = -logp
    row = base | dict(table="nll", context_length=int(length), windows=int(win["inputs"].shape[0]),
                      tokens=int(win["weights"].sum()), eval_s=round(seconds, 2))
    row |= evaluate.stratified_nll(nll, win["weights"], window, tuple(s.multiples))
    rows.append(row)
    edges = (0.0,) + tuple(s.multiples)
    rows += [base | dict(table="nll_distance", context_length=int(length)) | r
             for r in distance_bins(nll, win["weights"], window, edges)]
  if cfg.mechanism == "tc":
    rows += learned_rows(state.params, cfg, base)
  return rows


# ------------------------------------------------------------------ memory capacity


@functools.partial(jax.jit, static_argnums=(3, 4, 5, 6))
def _exact_writes(k_BNHD, v_BNHD, valid_N, rule: str, decay: float, eta: float, chunk: int):
  _, k, v = memory.prepare(k_BNHD, k_BNHD, v_BNHD)
  A0 = jnp.zeros(k.shape[:1] + k.shape[2:] + k.shape[-1:], f32)
  g = memory.log_decay(jnp.full(k.shape[2:3], math.log(decay), f32), valid_N)
  eta_H = jnp.full(k.shape[2:3], eta, f32)
  _, _, A_scan, _ = memory.memory_scan(k, k, v, g, eta_H, A0, rule, chunk)
  _, _, A_rec, _ = memory.memory_recurrence(k, k, v, g, eta_H, A0, rule)
  return A_scan, jnp.max(jnp.abs(A_scan - A_rec)) / jnp.maximum(jnp.max(jnp.abs(A_rec)), 1e-30)


def write_and_read(k_BNHD, v_BNHD, valid_N, rule: str, decay: float, eta: float, chunk: int):
  """Writes the valid pairs (one per step) into an empty memory and reads every key back.

  Steps with ``valid_N`` false (zero pairs) write nothing and do not decay, so one compile
  serves every number of pairs. Returns ``(reads_exact, reads_chunk_mean, err_scan)``: reads
  ``k_i A`` after all writes by the exact chunked scan and by chunk-mean writes of ``chunk``
  steps, and the largest difference between the chunked scan's final state and the
  per-token recurrence's, relative to the recurrence's largest entry.

  The chunk-mean scan runs outside ``jit``: on the CPU (jax 0.10.2) the jitted
  ``chunk_start_scan(mean=True)`` returned wrong states (inf/NaN or errors of the states'
  own size) for the outer rule whenever the batch or the head axis had size 1, e.g. B=32,
  H=1, N=64, D=16, C=16 (eager and B=32, H=4 agree with a float64 sum to 1e-8).
  """
  mask = jnp.asarray(valid_N)[None, :, None, None]
  k_BNHD, v_BNHD = jnp.asarray(k_BNHD) * mask, jnp.asarray(v_BNHD) * mask
  A_scan, err = _exact_writes(k_BNHD, v_BNHD, jnp.asarray(valid_N), rule, decay, eta, chunk)
  _, k, v = memory.prepare(k_BNHD, k_BNHD, v_BNHD)
  H = k.shape[2]
  _, _, A_mean, _ = memory.chunk_start_scan(k, k, v, jnp.full((H,), math.log(decay), f32), jnp.asarray(valid_N),
                                            jnp.full((H,), eta, f32), jnp.zeros_like(A_scan), rule, chunk, mean=True)
  read = functools.partial(jnp.einsum, "bnhd,bhde->bnhe", precision=jax.lax.Precision.HIGHEST)
  return read(k, A_scan), read(k, A_mean), err


def recall_scores(reads_BNHD, v_BNHD) -> tuple[float, float]:
  """Mean cosine between each read and its value; top-1 retrieval accuracy among the N values."""
  r = reads_BNHD / (np.linalg.norm(reads_BNHD, axis=-1, keepdims=True) + 1e-12)
  v = v_BNHD / (np.linalg.norm(v_BNHD, axis=-1, keepdims=True) + 1e-12)
  cos = np.einsum("bnhd,bmhd->bhnm", r, v)
  own = np.diagonal(cos, axis1=-2, axis2=-1)
  top1 = np.argmax(cos, axis=-1) == np.arange(cos.shape[-1])
  return float(own.mean()), float(top1.mean())


def capacity(config, workdir: str) -> list[dict]:
  del workdir
  s = config.study
  rows = []
  rng = np.random.default_rng(int(s.seed))
  for D in s.dims:
    counts = sorted({max(1, int(round(r * D))) for r in s.pairs_per_dim})
    n_max = max(counts)
    k = rng.standard_normal((int(s.trials), n_max, 1, D)).astype(np.float32)
    v = (rng.standard_normal((int(s.trials), n_max, 1, D)) / math.sqrt(D)).astype(np.float32)
    for N in counts:
      valid = np.arange(n_max) < N
      reads, reads_mean, err = write_and_read(k, v, valid, s.rule, float(s.decay), float(s.eta), int(s.chunk))
      for write, rd in (("exact", reads), ("chunk_mean", reads_mean)):
        cos, top1 = recall_scores(np.asarray(rd)[:, :N], v[:, :N])
        rows.append(dict(table="capacity", rule=s.rule, write=write, D=int(D), pairs=N, pairs_per_D=N / D,
                         chunk=int(s.chunk) if write == "chunk_mean" else 1, trials=int(s.trials),
                         cosine=cos, top1=top1, chance_top1=1.0 / N,
                         scan_vs_recurrence=float(err) if write == "exact" else math.nan))
  return rows


def learned_rows(params, cfg, base: dict) -> list[dict]:
  """Per tc layer and head: lambda, eta, horizon 1/(1 - lambda), gate sigma(g)."""
  rows = []
  for i in range(cfg.n_layer):
    if not cfg.has_memory(i):
      continue
    attn = params["params"][f"blocks_{i}"]["attn"]
    lam = np.asarray(jax.nn.sigmoid(attn["decay_logit"].astype(f32)))
    eta = np.asarray(jax.nn.sigmoid(attn["lr_logit"].astype(f32)))
    gate = float(jax.nn.sigmoid(attn["gate"].astype(f32))[0]) if "gate" in attn else math.nan
    for h in range(cfg.n_head):
      rows.append(base | dict(table="learned", layer=i, head=h, **{"lambda": float(lam[h])}, eta=float(eta[h]),
                              horizon=float(1.0 / max(1.0 - lam[h], 1e-12)), gate=gate,
                              lambda_init=cfg.decay_init, eta_init=cfg.lr_init, gate_init=cfg.gate_init))
  return rows


def learned(config, workdir: str) -> list[dict]:
  """``workdir`` is the reused run's (the runner resolves ``study.reuse``)."""
  from tensorcache import train

  state, train_s = _train(config, workdir)
  cfg = train.model_config(config.model)
  return learned_rows(state.params, cfg, _arm_fields(config) | dict(train_steps=int(state.step),
                                                                    train_s=round(train_s, 1)))


# ------------------------------------------------------------------ systems scaling


def is_oom(err: BaseException) -> bool:
  text = str(err)
  return any(s in text for s in ("RESOURCE_EXHAUSTED", "Out of memory", "out of memory", "OOM"))


def _memory_stats() -> dict:
  stats = jax.local_devices()[0].memory_stats() or {}
  return dict(bytes_in_use=stats.get("bytes_in_use"), peak_bytes=stats.get("peak_bytes_in_use"),
              bytes_limit=stats.get("bytes_limit"))


REPEATS = 3  # timed runs of a short prefill and of the decode loop (the median is kept)


@functools.partial(jax.jit, static_argnums=(0, 4), donate_argnums=2)
def decode_loop(model: GPT, params, cache, tok_B, steps: int):
  """``steps`` greedy decode steps (``GPT.extend`` on one token) in one ``lax.scan``."""
  params = inference.compute_params(model.cfg, params)

  def step(carry, _):
    tok, cache = carry
    logits, cache = model.apply(params, tok[:, None], cache, method=GPT.extend)
    nxt = jnp.argmax(logits[:, 0], -1).astype(jnp.int32)
    return (nxt, cache), nxt

  (_, cache), toks = jax.lax.scan(step, (tok_B, cache), None, length=steps)
  return toks, cache


def state_norm(cache) -> float | None:
  """Largest Frobenius norm over layers, batch and heads of the memory (tc ``A``, infini ``M``)."""
  mats = [lc.mem.A if isinstance(lc.mem, cache_lib.MemoryState) else lc.mem.M
          for lc in cache.layers if lc.mem is not None]
  norms = [jnp.sqrt(jnp.sum(jnp.square(m.astype(f32)), axis=(-2, -1))).max() for m in mats]
  return float(max(norms)) if norms else None


def _nbytes(tree) -> int:
  return sum(x.nbytes for x in jax.tree_util.tree_leaves(tree))


def systems_point(model: GPT, params, length: int, s, probe: bool) -> dict:
  """One prompt length: a warm-up segment (compiles), then the timed prefill in segments,
  the first greedy token and ``decode_steps`` decode steps. ``probe``: allocate the cache
  and run one segment only (memory, no throughput)."""
  cfg = model.cfg
  seg = min(int(s.segment), length)
  rng = np.random.default_rng(int(s.seed) + length)
  tokens = rng.integers(0, cfg.vocab_size, (1, seg if probe else length), dtype=np.int32)
  t0 = time.perf_counter()
  warm = inference.init_cache(cfg, 1)  # same signature as the timed calls: one compile serves both
  logits, warm = inference.prefill(model, params, tokens[:, :seg], warm, chunk=int(s.chunk))
  jax.block_until_ready(jnp.argmax(logits, -1).astype(jnp.int32))  # compiles the first-token op too
  del warm, logits
  warmup_s = time.perf_counter() - t0  # the compile, when this model has not run yet
  # Short prompts run REPEATS times (median; each on a fresh cache): a few milliseconds are
  # otherwise at the mercy of one scheduling hiccup.
  times = []
  for _ in range(1 if probe or length > 16 * seg else REPEATS):
    cache = logits = None  # the previous run's cache is freed before the next is allocated
    cache = inference.init_cache(cfg, 1)
    t0 = time.perf_counter()
    for i in range(0, tokens.shape[1], seg):
      logits, cache = inference.prefill(model, params, tokens[:, i:i + seg], cache, chunk=int(s.chunk))
    first = jnp.argmax(logits, -1).astype(jnp.int32)
    first.block_until_ready()
    times.append(time.perf_counter() - t0)
  ttft = float(np.median(times))
  after_prefill = _memory_stats()
  row = dict(length=length, status="probe" if probe else "ok", prompt_tokens_run=int(tokens.shape[1]),
             cache_bytes=_nbytes(cache), logits_finite=bool(np.isfinite(np.asarray(logits, np.float32)).all()),
             state_norm=state_norm(cache), warmup_s=round(warmup_s, 2),
             bytes_in_use_after_prefill=after_prefill["bytes_in_use"])
  if probe:
    row.update(peak_bytes=_memory_stats()["peak_bytes"], bytes_limit=after_prefill["bytes_limit"])
    return row
  row.update(ttft_s=ttft, prefill_tok_s=length / ttft, prefill_runs=len(times))
  steps = int(s.decode_steps)
  t0 = time.perf_counter()
  toks, cache = decode_loop(model, params, cache, first, steps)  # compiles (once per cache shape)
  last = jax.block_until_ready(toks[-1])  # (the eager slice compiles too: outside the timing)
  row["decode_first_call_s"] = round(time.perf_counter() - t0, 2)
  times = []
  for _ in range(REPEATS):
    t0 = time.perf_counter()
    toks, cache = decode_loop(model, params, cache, last, steps)
    last = jax.block_until_ready(toks[-1])
    times.append(time.perf_counter() - t0)
  decode_s = float(np.median(times))
  row.update(decode_tok_s=steps / decode_s, decode_ms_per_token=1e3 * decode_s / steps)
  mem = _memory_stats()
  row.update(peak_bytes=mem["peak_bytes"], bytes_limit=mem["bytes_limit"])
  del cache
  return row


def systems(config, workdir: str) -> list[dict]:
  """Ascending prompt lengths under ``study.budget_s``; stops at the first out-of-memory."""
  del workdir
  s = config.study
  cfg = ModelConfig(**config.model.to_dict())  # as train.model_config, without the trainer's imports
  start = time.perf_counter()
  params = jax.jit(GPT(cfg).init)(jax.random.PRNGKey(int(s.seed)), jnp.zeros((1, 8), jnp.int32))
  n_params = sum(x.size for x in jax.tree_util.tree_leaves(params))
  base = dict(table="systems", mechanism=cfg.mechanism, rule=cfg.rule if cfg.mechanism == "tc" else "",
              window=cfg.window, params=int(n_params), dtype=cfg.dtype, batch=1, segment=int(s.segment),
              chunk=int(s.chunk), decode_steps=int(s.decode_steps))
  extra = (1 + REPEATS) * int(s.decode_steps)  # decode positions the full cache must hold (warm + timed)
  power = 2 if cfg.mechanism == "full" else 1
  model_w = GPT(cfg)  # the windowed mechanisms: one model, one compile for every length
  rows, prev, probing = [], None, False
  for length in tuple(s.lengths) + tuple(s.probe_lengths):
    left = float(s.budget_s) - (time.perf_counter() - start)
    timed = length in tuple(s.lengths) and not probing and (not s.timed_max or length <= s.timed_max)
    compiles = (prev["warmup_s"] + prev["decode_first_call_s"]) if prev and power == 2 else 0.0
    if timed and prev is not None:  # time grows linearly (windowed) or quadratically (full)
      timed = prev["ttft_s"] * (length / prev["length"]) ** power + compiles + 2.0 < left
    probing = probing or not timed
    # Only full attention is probed (its memory grows); a probe needs about one prefill compile.
    if not timed and (cfg.mechanism != "full" or left < (prev["warmup_s"] if prev else 0.0) + 2.0):
      rows.append(base | dict(length=length, status=f"skipped: {left:.0f} s of budget left"))
      continue
    model = GPT(cfg.replace(max_len=length + extra)) if cfg.mechanism == "full" else model_w
    try:
      row = systems_point(model, params, length, s, probe=not timed)
    except Exception as err:  # noqa: BLE001  (XlaRuntimeError and friends: only an OOM is a result)
      if not is_oom(err):
        raise
      rows.append(base | dict(length=length, status="oom", error=str(err).splitlines()[0][:200]))
      break
    rows.append(base | row)
    if timed:
      prev = row
  return rows


KINDS: dict[str, Callable[..., list[dict]]] = dict(
    recall=recall, lm=lm, capacity=capacity, learned=learned, systems=systems)
