"""The compiled steps: ``train_step(state, batch) -> (state, metrics)`` (weighted cross
entropy, optional gradient accumulation, the optimiser update, the method's per-layer
internals) and the validation step used during training.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from tensorcache import optim, sharding
from tensorcache.model import GPT
from tensorcache.train_state import StepSpec, TrainState, compiler_options, on_mesh

f32 = jnp.float32


def global_norm(tree) -> jax.Array:
  """``sqrt(sum of squares)`` over every leaf, in float32."""
  return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(f32))) for x in jax.tree.leaves(tree)))


def layer_metrics(sown: Mapping[str, Any]) -> dict[str, jax.Array]:
  """The model's ``metrics`` collection (what each attention layer ``sow``s: gate, lambda,
  eta, horizon, read share, memory norm, Infini beta) as flat ``tc/l<i>/<name>`` scalars."""
  out = {}
  for block, sub in sown.items():
    layer = int(block.rsplit("_", 1)[1])
    for name, values in sub["attn"].items():
      group = "infini" if name == "beta" else "tc"
      out[f"{group}/l{layer}/{name}"] = values[0]
  return out


def forward(params, inputs, cfg, mesh: Mesh, internal_metrics: bool = False, targets=None):
  """The parallel forward: ``(logits, internals)``, or with ``targets`` the per-token cross
  entropy ``[B, T]`` instead of the logits (``GPT.token_losses``, blockwise with
  ``cfg.loss_block``). With a ``seq`` mesh axis the positions are split over it
  (``sharding.seq_sharded``, the loss computed per shard); ``inputs``, ``targets`` and the
  result are then in ``sharding.to_seq_layout`` order."""
  method = GPT.__call__ if targets is None else GPT.token_losses

  def apply(params, batch, cfg=cfg):
    args = (batch,) if targets is None else batch
    if not internal_metrics:
      return GPT(cfg).apply(params, *args, method=method), {}
    out, sown = GPT(cfg).apply(params, *args, method=method, mutable=["metrics"])
    return out, layer_metrics(sown.get("metrics", {}))

  batch = inputs if targets is None else (inputs, targets)
  if sharding.seq_shards(mesh) == 1:
    return apply(params, batch)
  return sharding.seq_sharded(functools.partial(apply, cfg=cfg.replace(seq_axis=sharding.SEQ)), mesh)(params, batch)


def _loss(params, inputs, targets, weights, total_weight, *, spec: StepSpec):
  """Weighted token-mean cross entropy: ``sum(w * ce) / total_weight`` (the total over the
  whole batch, so micro-batch losses add up to the full-batch loss). Inputs, targets and
  weights are reordered alike for a balanced ``seq`` split, which leaves the sum unchanged."""
  inputs, targets, weights = (sharding.to_seq_layout(x, spec.mesh, spec.model.seq_balanced)
                              for x in (inputs, targets, weights))
  ce, internals = forward(params, inputs, spec.model, spec.mesh, spec.internal_metrics, targets=targets)
  return jnp.sum(ce * weights) / total_weight, internals


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
    (loss, internals), grads = grad_fn(state.params, inputs, targets, weights, total_safe)
  else:
    micro = [_micro_batches(x, accum, mesh) for x in (inputs, targets, weights)]
    first = [m[0] for m in micro]
    (_, internals0), _ = jax.eval_shape(grad_fn, state.params, *first, total_safe)
    zeros = lambda t: jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), t)

    def body(carry, mb):
      g_acc, l_acc, s_acc = carry
      (l, s), g = grad_fn(state.params, *mb, total_safe)
      return (jax.tree.map(jnp.add, g_acc, g), l_acc + l, jax.tree.map(jnp.add, s_acc, s)), None

    init = (zeros(state.params), jnp.zeros((), f32), zeros(internals0))
    (grads, loss, internals), _ = jax.lax.scan(body, init, micro)
    internals = jax.tree.map(lambda s: s / accum, internals)

  grad_norm = global_norm(grads)
  tx = optim.make_optimizer(spec.optim, sched)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  params = sharding.constrain(params, mesh)
  opt_state = sharding.constrain(opt_state, mesh)
  out = dict(loss=loss, grad_norm=grad_norm, param_norm=global_norm(params),
             lr=optim.schedule(sched)(state.step), weight=total, **internals)
  return TrainState(state.step + 1, params, opt_state, state.rng), out


@functools.lru_cache(maxsize=None)
def _step_jit(fast_compile: bool):
  return jax.jit(_train_step, static_argnames=("spec",), donate_argnums=(0,),
                 compiler_options=compiler_options(fast_compile))


def make_train_step(spec: StepSpec) -> Callable[[TrainState, Mapping[str, jax.Array]], tuple[TrainState, dict]]:
  """The jitted ``train_step(state, batch) -> (state, metrics)``; ``state`` is donated.

  One compilation per distinct ``spec`` less its schedule numbers (passed as arrays) and per
  batch shape, shared by every ``train`` call in the process.
  """
  static = dataclasses.replace(spec, optim=optim.without_schedule(spec.optim))
  sched = jax.device_put(optim.schedule_values(spec.optim), sharding.replicated(spec.mesh))
  step = on_mesh(_step_jit(spec.fast_compile), spec.mesh)
  return lambda state, batch: step(state, batch, sched, spec=static)


def lower_train_step(spec: StepSpec, state: TrainState, batch: Mapping[str, Any]) -> jax.stages.Lowered:
  """``make_train_step(spec)``'s step (same jit, donation and static spec) lowered for
  ``state`` and ``batch``, which may be abstract (``ShapeDtypeStruct``s with shardings on
  ``spec.mesh``, e.g. a TPU topology's): ``.compile()`` it ahead of time."""
  static = dataclasses.replace(spec, optim=optim.without_schedule(spec.optim))
  rep = sharding.replicated(spec.mesh)
  sched = {k: jax.ShapeDtypeStruct(np.shape(v), v.dtype, sharding=rep)
           for k, v in optim.schedule_values(spec.optim).items()}
  return on_mesh(_step_jit(spec.fast_compile).lower, spec.mesh)(state, batch, sched, spec=static)


def _eval_step(params, batch: Mapping[str, jax.Array], spec: StepSpec):
  """``(sum of w * ce, sum of w)`` of one batch with the parallel (training) forward."""
  inputs, targets, w = (sharding.to_seq_layout(batch[k], spec.mesh, spec.model.seq_balanced)
                        for k in ("inputs", "targets", "weights"))
  ce, _ = forward(params, inputs, spec.model, spec.mesh, targets=targets)
  w = w.astype(f32)
  return jnp.sum(ce * w), jnp.sum(w)


@functools.lru_cache(maxsize=None)
def _eval_jit(fast_compile: bool):
  return jax.jit(_eval_step, static_argnames=("spec",), compiler_options=compiler_options(fast_compile))


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
  step_fn = on_mesh(_eval_jit(spec.fast_compile), spec.mesh)

  def eval_fn(state: TrainState, step: int) -> dict[str, float]:
    del step
    sums = []
    for i in range(batches):
      batch = sharding.shard_batch({k: v[i * rows:(i + 1) * rows] for k, v in local.items()}, spec.mesh)
      sums.append(step_fn(state.params, batch, spec=static))
    loss_sum, weight = (float(sum(x)) for x in zip(*jax.device_get(sums)))
    return {"loss": loss_sum / max(weight, 1.0), "tokens": weight}

  return eval_fn
