"""The trainer: one fixed loop shape (STYLE.md habit 7), resumable by rerunning it.

mesh -> ``jax.eval_shape(init)`` -> shardings (``sharding.py``) -> jitted init, or a restore
of the newest usable checkpoint into those shardings -> a jitted, donating
``train_step(state, batch) -> (state, metrics)`` -> a loop that dispatches step ``t + 1``
before it reads step ``t``'s metrics, stops on a non-finite loss / gradient / parameter norm
without saving, and saves parameters, optimiser state, step, RNG and the data-iterator
position together in one orbax ``CheckpointManager``.

Entry point: ``train(config, workdir)`` with a run config of ``configs/base.py``;
``python -m tensorcache.main`` calls it.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import time
from typing import Any, Callable, Mapping, Protocol

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from tensorcache import checkpoint, metrics as metrics_lib, optim, sharding
from tensorcache.config import ModelConfig, check_fields
from tensorcache.model import GPT

f32 = jnp.float32


class NonFiniteError(FloatingPointError):
  """A step produced a non-finite loss, gradient norm or parameter norm."""


class DataIterator(Protocol):
  """What the trainer needs from ``tensorcache.data.make_train_iterator``'s result."""

  def __next__(self) -> Mapping[str, np.ndarray]: ...
  def get_state(self) -> Any: ...
  def set_state(self, state: Any) -> None: ...


# ------------------------------------------------------------------ config bridge


def model_config(section: Mapping[str, Any]) -> ModelConfig:
  """The one bridge from a run config's ``model`` section to the frozen ``ModelConfig``."""
  values = dict(section.items())
  check_fields(ModelConfig, values, "model")
  return ModelConfig(**values)


@dataclasses.dataclass(frozen=True)
class StepSpec:
  """Everything the compiled train step depends on besides its arrays (hashable: the step
  is compiled once per distinct spec and reused across ``train`` calls)."""
  model: ModelConfig
  optim: optim.OptimConfig
  mesh: Mesh
  internal_metrics: bool = True
  fast_compile: bool = False  # XLA backend optimisation level 0: quick compiles, slower steps

  @property
  def compiler_options(self) -> dict | None:
    return _compiler_options(self.fast_compile)


def _compiler_options(fast_compile: bool) -> dict | None:
  return {"xla_backend_optimization_level": 0} if fast_compile else None


def _on_mesh(fn: Callable, mesh: Mesh) -> Callable:
  """``fn`` called with ``mesh`` in scope (``jax.set_mesh``). XLA cannot partition a Mosaic
  kernel, so splash attention must see the mesh while tracing to run per batch shard
  (``fast_attention.splash_attention``); without it a multi-chip TPU step fails to lower."""

  def run(*args, **kwargs):
    with jax.set_mesh(mesh):
      return fn(*args, **kwargs)

  return run


def step_spec(config, devices=None) -> StepSpec:
  """The ``StepSpec`` of a run config (``configs/base.py``): its model, optimiser and mesh
  over ``devices`` (default: every device; ``tensorcache.compile_tpu`` passes a TPU
  topology's). Raises ``ValueError`` when ``train.batch_size`` does not divide as
  ``_check_train_section`` requires."""
  tc = config.train
  cfg = model_config(config.model)
  ocfg = optim.optim_config(config.optim, int(tc.steps))
  mesh = sharding.make_mesh(tc.mesh.data, tc.mesh.fsdp, devices)
  _check_train_section(tc, ocfg.accum_steps, sharding.batch_shards(mesh))
  return StepSpec(cfg, ocfg, mesh, bool(tc.internal_metrics), bool(tc.fast_compile))


# ------------------------------------------------------------------ state


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 []: optimiser steps taken
  params: Any  # {'params': ...}, float32
  opt_state: Any
  rng: jax.Array  # uint32 [2]: raw PRNG key (no layer draws from it yet; stored and restored)


def init_state(spec: StepSpec, seed: int) -> TrainState:
  init_rng, rng = jax.random.split(jax.random.PRNGKey(seed))
  params = GPT(spec.model).init(init_rng, checkpoint.init_tokens())
  opt_state = optim.make_optimizer(spec.optim).init(params)
  return TrainState(jnp.zeros((), jnp.int32), params, opt_state, rng)


def state_shardings(abstract: TrainState, mesh: Mesh) -> TrainState:
  """Parameters and optimiser state by ``sharding.RULES``; step and RNG replicated."""
  rep = sharding.replicated(mesh)
  return TrainState(step=rep, params=sharding.tree_shardings(abstract.params, mesh),
                    opt_state=sharding.tree_shardings(abstract.opt_state, mesh), rng=rep)


def _init_fn(spec: StepSpec, seed: int):
  """``(jitted init, abstract state, shardings)``: shapes by ``eval_shape``, shardings by rule,
  then an init compiled straight into them (no device holds the whole unsharded model).
  Cached on what the initial state depends on (model, optimiser-state structure, mesh)."""
  key = dataclasses.replace(spec, optim=optim.OptimConfig(clip=spec.optim.clip), internal_metrics=True)
  return _init_fn_cached(key, seed)


@functools.lru_cache(maxsize=16)
def _init_fn_cached(spec: StepSpec, seed: int):
  abstract = jax.eval_shape(functools.partial(init_state, spec, seed))
  shardings = state_shardings(abstract, spec.mesh)
  init = jax.jit(functools.partial(init_state, spec, seed), out_shardings=shardings,
                 compiler_options=spec.compiler_options)
  return _on_mesh(init, spec.mesh), abstract, shardings


def abstract_train_state(spec: StepSpec, seed: int = 0) -> TrainState:
  """The train state as ``jax.ShapeDtypeStruct``s carrying their rule shardings (nothing is
  materialised): restore targets and ahead-of-time compile arguments."""
  _, abstract, shardings = _init_fn(spec, seed)
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, shardings)


def create_train_state(spec: StepSpec, seed: int) -> tuple[TrainState, TrainState]:
  """``(state, shardings)`` of a fresh run."""
  init, _, shardings = _init_fn(spec, seed)
  return init(), shardings


# ------------------------------------------------------------------ the step


def global_norm(tree) -> jax.Array:
  """``sqrt(sum of squares)`` over every leaf, in float32."""
  return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(f32))) for x in jax.tree.leaves(tree)))


def _capture(module, method_name: str) -> bool:
  """Intermediates kept for the internal metrics: the L1 and L2 output projections."""
  return method_name == "__call__" and module.name in ("c_proj", "tc_proj", "gate_proj")


def _wants_intermediates(spec: StepSpec) -> bool:
  return spec.internal_metrics and any(spec.model.has_memory(i) for i in range(spec.model.n_layer))


def _read_shares(inter, params, cfg: ModelConfig) -> dict[str, jax.Array]:
  """Per tc layer: the memory state's norm, the L2 branch's share of the attention output,
  ``|sigma(g) W_tc r| / (|c_proj(L1)| + |sigma(g) W_tc r|)`` with token-mean norms, and the
  token-mean gate when the gate is per token."""
  out = {}
  for i in range(cfg.n_layer):
    if not cfg.has_memory(i):
      continue
    attn = inter[f"blocks_{i}"]["attn"]
    l1 = attn["c_proj"]["__call__"][0].astype(f32)
    l2 = attn["tc_proj"]["__call__"][0].astype(f32)
    if cfg.per_token_gate:
      gate = jax.nn.sigmoid(attn["gate_proj"]["__call__"][0].astype(f32))
      out[f"tc/l{i}/gate"] = gate.mean()
    else:
      gate = jax.nn.sigmoid(params["params"][f"blocks_{i}"]["attn"]["gate"].astype(f32))
    n1 = jnp.linalg.norm(l1, axis=-1).mean()
    n2 = jnp.linalg.norm(gate * l2, axis=-1).mean()
    out[f"tc/l{i}/read_share"] = n2 / (n1 + n2 + 1e-12)
    out[f"tc/l{i}/memory_norm"] = attn["memory_norm"][0]  # mean |A|_F after the last position
  return out


def _param_internals(params, cfg: ModelConfig) -> dict[str, jax.Array]:
  """Per layer: gate sigma(g), mean lambda, mean eta, mean horizon 1/(1 - lambda); sigma(beta)
  for Infini-attention."""
  out = {}
  for i in range(cfg.n_layer):
    attn = params["params"][f"blocks_{i}"]["attn"]
    if cfg.has_memory(i):
      lam = jax.nn.sigmoid(attn["decay_logit"].astype(f32))
      out[f"tc/l{i}/lambda"] = lam.mean()
      out[f"tc/l{i}/eta"] = jax.nn.sigmoid(attn["lr_logit"].astype(f32)).mean()
      out[f"tc/l{i}/horizon"] = (1.0 / jnp.maximum(1.0 - lam, 1e-12)).mean()
      if cfg.two_timescales:
        out[f"tc/l{i}/lambda_slow"] = jax.nn.sigmoid(attn["decay_slow_logit"].astype(f32)).mean()
        out[f"tc/l{i}/eta_slow"] = jax.nn.sigmoid(attn["lr_slow_logit"].astype(f32)).mean()
        out[f"tc/l{i}/alpha"] = jax.nn.sigmoid(attn["alpha_logit"].astype(f32)).mean()
      if not cfg.per_token_gate:
        out[f"tc/l{i}/gate"] = jax.nn.sigmoid(attn["gate"].astype(f32))[0]
    if cfg.mechanism == "infini":
      out[f"infini/l{i}/beta"] = jax.nn.sigmoid(attn["beta"].astype(f32)).mean()
  return out


def _loss(params, inputs, targets, weights, total_weight, *, spec: StepSpec):
  """Weighted token-mean cross entropy: ``sum(w * ce) / total_weight`` (the total over the
  whole batch, so micro-batch losses add up to the full-batch loss)."""
  model = GPT(spec.model)
  inter = None
  if _wants_intermediates(spec):
    logits, state = model.apply(params, inputs, capture_intermediates=_capture, mutable=["intermediates"])
    inter = state["intermediates"]
  else:
    logits = model.apply(params, inputs)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(f32), targets)
  loss = jnp.sum(ce * weights) / total_weight
  return loss, (_read_shares(inter, params, spec.model) if inter is not None else {})


def _micro_batches(x, accum: int, mesh: Mesh):
  """``[b, ...] -> [accum, b / accum, ...]`` taking every ``accum``-th row, so each device's
  rows split evenly across micro-batches (no data moves between devices)."""
  x = x.reshape(x.shape[0] // accum, accum, *x.shape[1:]).swapaxes(0, 1)
  return sharding.constrain_batch(x, mesh, leading=1)


def _train_step(state: TrainState, batch: Mapping[str, jax.Array], sched: Mapping[str, jax.Array],
                spec: StepSpec):
  mesh, accum = spec.mesh, spec.optim.accum_steps
  inputs, targets = batch["inputs"], batch["targets"]
  weights = batch["weights"].astype(f32)
  total = jnp.sum(weights)
  total_safe = jnp.where(total > 0, total, 1.0)
  grad_fn = jax.value_and_grad(functools.partial(_loss, spec=spec), has_aux=True)

  if accum == 1:
    (loss, shares), grads = grad_fn(state.params, inputs, targets, weights, total_safe)
  else:
    micro = [_micro_batches(x, accum, mesh) for x in (inputs, targets, weights)]
    first = [m[0] for m in micro]
    (_, shares0), _ = jax.eval_shape(grad_fn, state.params, *first, total_safe)
    zeros = lambda t: jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), t)

    def body(carry, mb):
      g_acc, l_acc, s_acc = carry
      (l, s), g = grad_fn(state.params, *mb, total_safe)
      return (jax.tree.map(jnp.add, g_acc, g), l_acc + l, jax.tree.map(jnp.add, s_acc, s)), None

    init = (zeros(state.params), jnp.zeros((), f32), zeros(shares0))
    (grads, loss, shares), _ = jax.lax.scan(body, init, micro)
    shares = jax.tree.map(lambda s: s / accum, shares)

  grad_norm = global_norm(grads)
  tx = optim.make_optimizer(spec.optim, sched)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  params = sharding.constrain(params, mesh)
  opt_state = sharding.constrain(opt_state, mesh)
  out = dict(loss=loss, grad_norm=grad_norm, param_norm=global_norm(params),
             lr=optim.schedule(sched)(state.step), weight=total)
  if spec.internal_metrics:
    out.update(_param_internals(state.params, spec.model))
    out.update(shares)
  return TrainState(state.step + 1, params, opt_state, state.rng), out


@functools.lru_cache(maxsize=None)
def _step_jit(fast_compile: bool):
  return jax.jit(_train_step, static_argnames=("spec",), donate_argnums=(0,),
                 compiler_options=_compiler_options(fast_compile))


def make_train_step(spec: StepSpec) -> Callable[[TrainState, Mapping[str, jax.Array]], tuple[TrainState, dict]]:
  """The jitted ``train_step(state, batch) -> (state, metrics)``; ``state`` is donated.

  One compilation per distinct ``spec`` less its schedule numbers (passed as arrays) and per
  batch shape, shared by every ``train`` call in the process.
  """
  static = dataclasses.replace(spec, optim=optim.without_schedule(spec.optim))
  sched = jax.device_put(optim.schedule_values(spec.optim), sharding.replicated(spec.mesh))
  step = _on_mesh(_step_jit(spec.fast_compile), spec.mesh)
  return lambda state, batch: step(state, batch, sched, spec=static)


def lower_train_step(spec: StepSpec, state: TrainState, batch: Mapping[str, Any]) -> jax.stages.Lowered:
  """``make_train_step(spec)``'s step (same jit, donation and static spec) lowered for
  ``state`` and ``batch``, which may be abstract (``ShapeDtypeStruct``s with shardings on
  ``spec.mesh``, e.g. a TPU topology's): ``.compile()`` it ahead of time."""
  static = dataclasses.replace(spec, optim=optim.without_schedule(spec.optim))
  rep = sharding.replicated(spec.mesh)
  sched = {k: jax.ShapeDtypeStruct(np.shape(v), v.dtype, sharding=rep)
           for k, v in optim.schedule_values(spec.optim).items()}
  return _on_mesh(_step_jit(spec.fast_compile).lower, spec.mesh)(state, batch, sched, spec=static)


def _eval_step(params, batch: Mapping[str, jax.Array], spec: StepSpec):
  """``(sum of w * ce, sum of w)`` of one batch with the parallel (training) forward."""
  logits = GPT(spec.model).apply(params, batch["inputs"])
  ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(f32), batch["targets"])
  w = batch["weights"].astype(f32)
  return jnp.sum(ce * w), jnp.sum(w)


@functools.lru_cache(maxsize=None)
def _eval_jit(fast_compile: bool):
  return jax.jit(_eval_step, static_argnames=("spec",), compiler_options=_compiler_options(fast_compile))


def make_validation_fn(config, spec: StepSpec) -> Callable[[TrainState, int], dict[str, float]]:
  """``eval_fn(state, step) -> {'loss', 'tokens'}``: weighted cross entropy of the parallel
  forward on ``train.eval_windows`` validation windows of ``tensorcache.data`` (documents
  held out by the data pipeline's split; the task's validation stream for synthetic tasks).
  Each process takes its share of the windows; every process runs the same number of
  batches (padding rows have weight 0). The streaming, distance-stratified protocols are
  ``tensorcache.evaluate``'s."""
  from tensorcache import data

  tc = config.train
  nproc, pidx = jax.process_count(), jax.process_index()
  rows = int(tc.batch_size) // nproc
  wanted = int(tc.eval_windows)
  win = data.make_eval_windows(config.data, seq_len=int(tc.seq_len), num_windows=wanted,
                               process_index=pidx, process_count=nproc)
  batches = max(1, math.ceil(math.ceil(wanted / nproc) / rows))
  total = batches * rows
  local = {}
  for key in ("inputs", "targets", "weights"):
    x = np.asarray(win[key])[:total]
    pad = np.zeros((total - x.shape[0],) + x.shape[1:], x.dtype)
    local[key] = np.concatenate([x, pad])
  static = dataclasses.replace(spec, optim=optim.OptimConfig(), internal_metrics=False)
  step_fn = _on_mesh(_eval_jit(spec.fast_compile), spec.mesh)

  def eval_fn(state: TrainState, step: int) -> dict[str, float]:
    del step
    sums = []
    for i in range(batches):
      batch = sharding.shard_batch({k: v[i * rows:(i + 1) * rows] for k, v in local.items()}, spec.mesh)
      sums.append(step_fn(state.params, batch, spec=static))
    loss_sum, weight = (float(sum(x)) for x in zip(*jax.device_get(sums)))
    return {"loss": loss_sum / max(weight, 1.0), "tokens": weight}

  return eval_fn


# ------------------------------------------------------------------ the loop


def _default_iterator_factory():
  try:
    from tensorcache import data
    return data.make_train_iterator
  except (ImportError, AttributeError) as e:
    raise RuntimeError(
        "tensorcache.data is not importable, so train() has no data pipeline; pass "
        "make_iterator=... (same signature as tensorcache.data.make_train_iterator).") from e


def _check_vocab(data_config, cfg: ModelConfig) -> None:
  """The model's vocabulary must cover the data's (``tensorcache.data.vocab_size``)."""
  from tensorcache import data  # the default pipeline is in use, so the package exists

  need = data.vocab_size(data_config)
  if cfg.vocab_size < need:
    raise ValueError(f"model.vocab_size={cfg.vocab_size} is smaller than the data's vocabulary "
                     f"({need}, tokenizer / task of config.data); set --config.model.vocab_size={need}.")


def _check_batch(batch: Mapping[str, np.ndarray], rows: int, seq_len: int, vocab: int, step: int) -> None:
  """Host-side contract check of one local batch (cheap; catches tokenizer/vocab mismatches
  that the jitted model cannot)."""
  for key in ("inputs", "targets", "weights"):
    if key not in batch:
      raise KeyError(f"batch for step {step} lacks {key!r} (has {sorted(batch)}).")
    if np.shape(batch[key]) != (rows, seq_len):
      raise ValueError(f"batch[{key!r}] for step {step} has shape {np.shape(batch[key])}; "
                       f"expected (per-process batch, seq_len) = {(rows, seq_len)}.")
  for key in ("inputs", "targets"):
    t = np.asarray(batch[key])
    if not np.issubdtype(t.dtype, np.integer):
      raise TypeError(f"batch[{key!r}] must hold integer token ids, got {t.dtype}.")
    if t.size and (t.min() < 0 or t.max() >= vocab):
      raise ValueError(f"batch[{key!r}] for step {step} has ids in [{t.min()}, {t.max()}] but "
                       f"model.vocab_size={vocab}; match the model to the tokenizer.")


class _Profiler:
  """``jax.profiler`` trace of steps ``(start, start + count]`` into ``<workdir>/profile``."""

  def __init__(self, workdir: str, start: int, count: int):
    self.dir, self.first, self.last = os.path.join(workdir, "profile"), start + 1, start + count
    self.active = False

  def before(self, step: int) -> None:
    if self.last >= self.first and step == self.first and not self.active:
      jax.profiler.start_trace(self.dir)
      self.active = True

  def after(self, step: int, state) -> None:
    if self.active and step >= self.last:
      jax.block_until_ready(state)
      self.stop()

  def stop(self) -> None:
    if self.active:
      jax.profiler.stop_trace()
      self.active = False


def _rng_to_json(rng) -> list[int]:
  return [int(x) for x in np.asarray(jax.device_get(rng)).reshape(-1)]


def _non_finite_message(step: int, m: Mapping[str, float], mngr) -> str:
  mngr.wait_until_finished()  # an earlier, verified step may still be writing
  last = [s for s in mngr.all_steps() if checkpoint.is_committed(mngr, s)]
  kept = (f"the last good checkpoint, step {max(last)}, is kept in {mngr.directory}; rerunning resumes from it"
          if last else "no checkpoint had been saved yet")
  return (f"Non-finite training at step {step}: loss={m['loss']}, grad_norm={m['grad_norm']}, "
          f"param_norm={m['param_norm']}. Stopped without saving this state; {kept}. "
          "Lower optim.lr, check the data (weights / ids) for NaNs, or raise optim.warmup_steps.")


def _restore_or_init(mngr, spec: StepSpec, seed: int, it: DataIterator) -> tuple[TrainState, int]:
  """The newest usable checkpoint's state (and the data position, set on ``it``), or a fresh
  state: ``(state, step)``. Restored arrays land directly in the rule shardings."""
  init, _, shardings = _init_fn(spec, seed)
  target = abstract_train_state(spec, seed)
  step, items = checkpoint.restore_train(mngr, spec.model, target.params, target.opt_state)
  if step is None:
    return init(), 0
  meta = items["train"]
  if int(meta["step"]) != step:
    raise ValueError(f"checkpoint {step} in {mngr.directory} records step {meta['step']}.")
  it.set_state(items["data_state"])
  logging.info("resumed from step %d in %s", step, mngr.directory)
  rng = jax.device_put(np.asarray(meta["rng"], np.uint32), shardings.rng)
  return TrainState(jax.device_put(np.int32(step), shardings.step), items["params"], items["opt_state"], rng), step


class _Reporter:
  """Reads a step's metrics (the NaN guard), drives the progress bar and writes the logs."""

  def __init__(self, workdir: str, tc, start: int, tokens_per_step: int, mngr):
    self.tc, self.start, self.tokens_per_step, self.mngr = tc, start, tokens_per_step, mngr
    primary = jax.process_index() == 0
    self.writer = metrics_lib.MetricWriter(workdir, enabled=primary, resume_step=start)
    self.bar = None
    if tc.progress and primary:
      from tqdm.auto import tqdm
      self.bar = tqdm(total=int(tc.steps), initial=start, unit="step", dynamic_ncols=True, desc="train")
    self.last, self.rate = time.perf_counter(), None

  def read(self, step: int, m_dev) -> None:
    """Blocks on step ``step``'s metrics; raises ``NonFiniteError`` on NaN/Inf."""
    m = {k: float(v) for k, v in jax.device_get(m_dev).items()}
    if not all(math.isfinite(m[k]) for k in ("loss", "grad_norm", "param_norm")):
      raise NonFiniteError(_non_finite_message(step, m, self.mngr))
    now = time.perf_counter()
    dt, self.last = now - self.last, now
    if step > self.start + 1:  # a process's first step includes compilation
      rate = self.tokens_per_step / max(dt, 1e-9)
      self.rate = rate if self.rate is None else 0.9 * self.rate + 0.1 * rate
    if self.bar is not None:
      self.bar.set_postfix(loss=f"{m['loss']:.4f}", tok_s="-" if self.rate is None else f"{self.rate:.0f}",
                           refresh=False)
      self.bar.update(1)
    if step % int(self.tc.log_every) == 0 or step == int(self.tc.steps):
      extra = {"tokens_per_s": self.rate} if self.rate is not None else {}
      self.writer.write(step, {**m, "step_time_s": dt, **extra})

  def write(self, step: int, scalars: Mapping[str, float]) -> None:
    self.writer.write(step, scalars)

  def close(self) -> None:
    self.writer.close()
    if self.bar is not None:
      self.bar.close()


def _check_train_section(tc, accum: int, shards: int) -> None:
  for name in ("steps", "batch_size", "seq_len", "log_every", "checkpoint_every", "keep"):
    if int(tc[name]) < 1:
      raise ValueError(f"train.{name} must be >= 1, got {tc[name]}.")
  batch, nproc = int(tc.batch_size), jax.process_count()
  if batch % (accum * shards) or batch % nproc:
    raise ValueError(
        f"train.batch_size={batch} must be divisible by optim.accum_steps x batch shards "
        f"({accum} x {shards}, mesh data x fsdp) and by the {nproc} processes.")


def train(config, workdir: str, *, make_iterator: Callable[..., DataIterator] | None = None,
          eval_fn: Callable[[TrainState, int], Mapping[str, float]] | None = None) -> TrainState:
  """Trains ``config`` (a run config of ``configs/base.py``) in ``workdir``; resumes from the
  newest usable checkpoint there. Returns the final ``TrainState``.

  Args:
    config: ``ConfigDict`` with sections ``model``, ``data``, ``optim``, ``train``.
    workdir: checkpoints, ``metrics.jsonl`` / ``metrics.csv``, TensorBoard events (``tb/``),
      ``config.json`` and profiler traces (``profile/``).
    make_iterator: the data factory, ``make_train_iterator(data_config, *, seq_len,
      global_batch_size, seed, process_index, process_count)`` returning an iterator with
      ``get_state`` / ``set_state`` of per-process batches ``{'inputs', 'targets':
      int32 [b, T], 'weights': float32 [b, T]}``; default ``tensorcache.data``'s.
    eval_fn: called as ``eval_fn(state, step)`` every ``train.eval_every`` steps; its scalars
      are logged under ``eval/``. Default (with the default data): ``make_validation_fn``,
      the loss on ``train.eval_windows`` held-out windows.

  Raises:
    NonFiniteError: a step's loss, gradient norm or parameter norm is NaN/Inf (that state
      is never saved; the previous checkpoint stays the newest).
  """
  tc = config.train
  total_steps, seq_len, gbatch = int(tc.steps), int(tc.seq_len), int(tc.batch_size)
  spec = step_spec(config)
  cfg, mesh = spec.model, spec.mesh
  nproc, pidx = jax.process_count(), jax.process_index()
  os.makedirs(workdir, exist_ok=True)
  if pidx == 0:
    with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
      f.write(config.to_json_best_effort(indent=2))

  if make_iterator is None:
    make_iterator = _default_iterator_factory()
    _check_vocab(config.data, cfg)
    if eval_fn is None and int(tc.eval_every) > 0:
      eval_fn = make_validation_fn(config, spec)
  elif eval_fn is None and int(tc.eval_every) > 0:
    logging.warning("train.eval_every is set, but with a custom make_iterator and no eval_fn "
                    "there is nothing to evaluate on.")
  it = make_iterator(config.data, seq_len=seq_len, global_batch_size=gbatch, seed=int(tc.seed),
                     process_index=pidx, process_count=nproc)
  for method in ("get_state", "set_state"):
    if not callable(getattr(it, method, None)):
      raise TypeError(f"the data iterator ({type(it).__name__}) has no {method}(); the trainer "
                      "checkpoints the data position with the model.")

  # mesh -> eval_shape(init) -> shardings -> restore into them, or the jitted init.
  mngr = checkpoint.manager(workdir, max_to_keep=int(tc.keep), async_save=bool(tc.async_checkpoint))
  state, start = _restore_or_init(mngr, spec, int(tc.seed), it)
  step_fn = make_train_step(spec)
  report = _Reporter(workdir, tc, start, gbatch * seq_len, mngr)
  profiler = _Profiler(workdir, int(tc.profile_start), int(tc.profile_steps))
  run_meta = json.loads(config.to_json_best_effort())

  pending = None  # (step, device metrics) not read yet
  try:
    for step in range(start + 1, total_steps + 1):
      host = next(it)
      _check_batch(host, gbatch // nproc, seq_len, cfg.vocab_size, step)
      batch = sharding.shard_batch({k: host[k] for k in ("inputs", "targets", "weights")}, mesh)
      profiler.before(step)
      state, metrics = step_fn(state, batch)  # dispatch step t + 1 ...
      if pending is not None:
        report.read(*pending)  # ... then read step t
      pending = (step, metrics)
      profiler.after(step, state)
      preempted = mngr.reached_preemption(step)
      save = step % int(tc.checkpoint_every) == 0 or step == total_steps or preempted
      evaluate = eval_fn is not None and int(tc.eval_every) > 0 and step % int(tc.eval_every) == 0
      if save or evaluate:
        report.read(*pending)  # never save or evaluate a step that was not finite
        pending = None
      if save:
        meta = dict(step=step, rng=_rng_to_json(state.rng), config=run_meta)
        checkpoint.save_train(mngr, step, cfg, state.params, state.opt_state, meta, it.get_state())
      if evaluate:
        report.write(step, {f"eval/{k}": v for k, v in eval_fn(state, step).items()})
      if preempted:
        logging.warning("preemption signalled: saved step %d; rerun the same command to resume", step)
        break
    if pending is not None:
      report.read(*pending)
  finally:
    profiler.stop()
    mngr.wait_until_finished()  # an interrupted run still completes its last save
    mngr.close()
    report.close()
  return state
