"""Device mesh, parameter sharding rules and batch sharding: the one module that knows devices.

Modules never see a mesh (STYLE.md habit 12). The trainer asks this module for:

- ``make_mesh(data, fsdp, seq=)``: a ``("data", "fsdp", "seq")`` mesh over all devices (1 or
  many hosts); ``seq`` splits the positions (sequence parallelism);
- ``tree_shardings(tree, mesh)``: one ``NamedSharding`` per leaf of a parameter or optimiser
  state tree, chosen by the leaf's *name* through ``RULES``. FSDP shards a matrix along its
  largest axis divisible by the ``fsdp`` size (replicated when none is); named small vectors
  and counters are replicated explicitly. A leaf that no rule names raises
  ``UnmatchedParameterError`` instead of being silently replicated: a new parameter must be
  given a rule here;
- ``batch_sharding(mesh)`` / ``shard_batch``: batches split over ``data x fsdp`` on their
  leading axis and over ``seq`` on the positions, assembled from each process's local rows;
- ``seq_sharded(fn, mesh)``: ``fn`` run per device under ``jax.shard_map`` (every axis
  manual), the model built with ``seq_axis=SEQ`` so its per-shard math
  (``seq_parallel.py``) exchanges what it needs;
  ``to_seq_layout`` / ``from_seq_layout``: the zigzag order of balanced causal attention.

Version-sensitive calls (mesh axis types, the partitioner choice) live here only.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from tensorcache import seq_parallel

DATA, FSDP, SEQ = "data", "fsdp", "seq"
AXES = (DATA, FSDP, SEQ)
BATCH = (DATA, FSDP)  # the batch axis is split over both mesh axes

SHARD, REPLICATE = "fsdp", "replicate"


class UnmatchedParameterError(ValueError):
  """A parameter (or optimiser-state leaf) that no sharding rule names."""


@dataclasses.dataclass(frozen=True)
class Rule:
  """``pattern`` is searched in the leaf's ``/``-joined path (``params/blocks_0/attn/gate``).

  ``SHARD``: FSDP over the largest axis divisible by the fsdp size. ``REPLICATE``: a copy
  on every device; only for leaves of at most ``max_ndim`` dimensions, so a matrix that
  happens to share a vector's name is not replicated by accident.
  """
  pattern: str
  kind: str
  max_ndim: int | None = None


RULES: tuple[Rule, ...] = (
    # Matrices: every Dense kernel (c_attn, c_proj, tc_proj, gate_proj, mlp fc / proj) and
    # the tied token embedding / LM head.
    Rule(r"(^|/)kernel$", SHARD),
    Rule(r"(^|/)embedding$", SHARD),
    # Small vectors: LayerNorm scales, biases, the memory's per-head decay / write-rate
    # logits, the two-timescale mix, the scalar gate, Infini-attention's beta.
    Rule(r"(^|/)(scale|bias)$", REPLICATE, max_ndim=1),
    Rule(r"(^|/)(decay|lr|decay_slow|lr_slow|alpha)_logit$", REPLICATE, max_ndim=1),
    Rule(r"(^|/)(gate|beta)$", REPLICATE, max_ndim=1),
    # Optimiser counters (optax ``count``).
    Rule(r"(^|/)count$", REPLICATE, max_ndim=0),
)


def make_mesh(data: int = -1, fsdp: int = 1, devices: Sequence[jax.Device] | None = None, *,
              seq: int = 1) -> Mesh:
  """A ``("data", "fsdp", "seq")`` mesh; ``-1`` on ``data`` or ``fsdp`` takes the devices left
  over. ``seq`` is the innermost axis, so a ring's neighbours are neighbouring devices.

  Uses the topology-aware device order where the platform has one (TPU), a plain reshape
  elsewhere. Axis types are ``Auto`` (GSPMD propagation), whatever jax's default.
  """
  devices = list(jax.devices() if devices is None else devices)
  n = len(devices)
  if data == -1 and fsdp == -1:
    raise ValueError("At most one mesh axis may be -1.")
  rest = n // seq if seq > 0 and n % seq == 0 else 0
  if data == -1:
    data = rest // fsdp if fsdp > 0 and rest % fsdp == 0 else 0
  elif fsdp == -1:
    fsdp = rest // data if data > 0 and rest % data == 0 else 0
  if data <= 0 or fsdp <= 0 or seq <= 0 or data * fsdp * seq != n:
    raise ValueError(f"mesh data={data} x fsdp={fsdp} x seq={seq} does not cover the {n} devices.")
  try:
    from jax.experimental import mesh_utils
    grid = mesh_utils.create_device_mesh((data, fsdp, seq), devices)
  except Exception:  # noqa: BLE001 - no topology information (CPU, some GPU hosts)
    grid = np.asarray(devices).reshape(data, fsdp, seq)
  if seq > 1 and devices[0].platform == "gpu":
    _gspmd_for_gpu_seq()
  auto = (jax.sharding.AxisType.Auto,) * 3
  return Mesh(grid, AXES, axis_types=auto)


def _gspmd_for_gpu_seq() -> None:
  """Partition with GSPMD, not Shardy, once a GPU mesh splits the positions.

  jax 0.11.2 on CUDA segfaults inside Shardy's ``shardy-xla`` pass compiling the sharded
  training step of ring-attention ``full`` and of ``tc`` with the linear rules (outer,
  wedge), already for a 2-layer model on 2 GPUs; tc delta, window, sinks and infini compile.
  No ``XLA_FLAGS`` GPU-pass switch avoids it; ``jax_use_shardy_partitioner=False`` does (2
  H200s, 2026-11-30, ``results/seq_parallel/README.md``). The setting is process-wide.
  """
  if jax.config.jax_use_shardy_partitioner:
    logging.warning("Sequence parallelism on GPU: partitioning with GSPMD instead of Shardy (jax_use_shardy_partitioner"
                    "=False), which avoids a segmentation fault in Shardy's shardy-xla pass (jax 0.11.2).")
    jax.config.update("jax_use_shardy_partitioner", False)


def path_name(path) -> str:
  """``params/blocks_0/attn/gate`` for a ``jax.tree_util`` key path."""
  return jax.tree_util.keystr(tuple(path), simple=True, separator="/")


def leaf_spec(name: str, shape: Sequence[int], fsdp_size: int, rules: Sequence[Rule] = RULES) -> P:
  """The partition spec the first matching rule gives a leaf; raises if none matches."""
  for rule in rules:
    if not re.search(rule.pattern, name):
      continue
    if rule.kind == REPLICATE:
      if rule.max_ndim is not None and len(shape) > rule.max_ndim:
        raise UnmatchedParameterError(
            f"{name} {tuple(shape)} matches replicate rule {rule.pattern!r}, which only takes "
            f"leaves of ndim <= {rule.max_ndim}; give it a rule in tensorcache/sharding.py.")
      return P()
    axes = [None] * len(shape)
    if fsdp_size > 1:
      for axis in sorted(range(len(shape)), key=lambda a: -shape[a]):
        if shape[axis] % fsdp_size == 0:
          axes[axis] = FSDP
          break
    return P(*axes)
  raise UnmatchedParameterError(
      f"No sharding rule for {name} {tuple(shape)}. Add one to RULES in tensorcache/sharding.py "
      f"(rules: {[r.pattern for r in rules]}).")


def tree_specs(tree, mesh: Mesh, rules: Sequence[Rule] = RULES):
  """Partition specs for every leaf of ``tree`` (arrays or ``ShapeDtypeStruct``s)."""
  fsdp_size = mesh.shape[FSDP]
  return jax.tree_util.tree_map_with_path(
      lambda path, x: leaf_spec(path_name(path), x.shape, fsdp_size, rules), tree)


def tree_shardings(tree, mesh: Mesh, rules: Sequence[Rule] = RULES):
  return jax.tree.map(lambda spec: NamedSharding(mesh, spec), tree_specs(tree, mesh, rules),
                      is_leaf=lambda x: isinstance(x, P))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def constrain(tree, mesh: Mesh, rules: Sequence[Rule] = RULES):
  """Inside ``jit``: pins every leaf of a parameter / optimiser tree to its rule's sharding."""
  return jax.lax.with_sharding_constraint(tree, tree_shardings(tree, mesh, rules))


def batch_spec(ndim: int, leading: int = 0) -> P:
  """Batch axis ``leading`` split over ``data x fsdp``, the positions after it over ``seq``;
  other axes whole."""
  axes: list[Any] = [None] * ndim
  axes[leading] = BATCH
  if ndim > leading + 1:
    axes[leading + 1] = SEQ
  return P(*axes)


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
  return NamedSharding(mesh, batch_spec(ndim))


def batch_shards(mesh: Mesh) -> int:
  """Number of pieces the batch axis is split into."""
  return mesh.shape[DATA] * mesh.shape[FSDP]


def constrain_batch(x, mesh: Mesh, leading: int = 0):
  """Inside ``jit``: keeps axis ``leading`` of ``x`` split over ``data x fsdp`` (and the
  positions after it over ``seq``)."""
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, batch_spec(x.ndim, leading)))


def shard_batch(local: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Global batch arrays from this process's rows (every process passes its own slice, in
  process order; a single process passes the whole batch)."""
  return {k: jax.make_array_from_process_local_data(batch_sharding(mesh, np.ndim(v)), np.asarray(v))
          for k, v in local.items()}


# ------------------------------------------------------------------ sequence parallelism


def seq_shards(mesh: Mesh) -> int:
  """Number of pieces the positions are split into."""
  return mesh.shape[SEQ]


def to_seq_layout(x, mesh: Mesh, balanced: bool):
  """Positions (axis 1) in the order the ``seq`` shards hold them: zigzag when ``balanced``
  (``ModelConfig.seq_balanced``), as they are otherwise. Per-token arrays that meet the
  model's output (targets, weights) take the same order, so a loss needs no reordering."""
  n = seq_shards(mesh)
  if not balanced or n == 1:
    return x
  return jnp.take(x, seq_parallel.zigzag_order(x.shape[1], n), axis=1)


def from_seq_layout(x, mesh: Mesh, balanced: bool):
  """Inverse of ``to_seq_layout``: positions back in sequence order."""
  n = seq_shards(mesh)
  if not balanced or n == 1:
    return x
  return jnp.take(x, np.argsort(seq_parallel.zigzag_order(x.shape[1], n)), axis=1)


def seq_sharded(fn: Callable, mesh: Mesh) -> Callable:
  """``fn(params, tokens) -> (per_token, scalars)`` run per device, the positions split over
  ``seq`` and the rows over ``data x fsdp``.

  Every mesh axis is manual: ``tokens [B, T]`` (in ``to_seq_layout`` order; or a tuple of
  such arrays, e.g. inputs and targets) reach ``fn`` as this device's
  ``[B / (data fsdp), T / seq]`` and ``params`` whole (gathered at the boundary
  when FSDP shards them: within the step each device holds all parameters). The gradient of
  ``params`` is summed over the devices by the ``shard_map`` transpose, in float32.
  ``per_token [b, T / seq, ...]`` come back as ``[B, T, ...]``; ``scalars`` (any pytree) are
  averaged over the devices. ``fn`` must build its model with ``seq_axis=SEQ``.

  (A ``shard_map`` with only ``seq`` manual compiled on CPU but crashed on 2 H200s, jax
  0.11.2; the all-manual one crashed too for some mechanisms, inside Shardy, which
  ``make_mesh`` therefore turns off for GPU ``seq`` meshes: ``results/seq_parallel/``.)
  """

  def per_shard(params, tokens):
    # Typed varying here, in float32: the gradient's sum over devices is one float32 psum
    # per parameter, never one of the compute dtype's copies (a bf16 all-reduce inside a
    # shard_map crashed XLA:CPU: "Invalid binary instruction opcode copy").
    params = jax.tree.map(lambda p: jax.lax.pcast(p, AXES, to="varying"), params)
    out, scalars = fn(params, tokens)
    return out, jax.tree.map(lambda s: jax.lax.pmean(s, AXES), scalars)

  return jax.shard_map(per_shard, mesh=mesh, in_specs=(P(), P(BATCH, SEQ)), out_specs=(P(BATCH, SEQ), P()))
