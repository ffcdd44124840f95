"""Ahead-of-time compiles of a run for a named Cloud TPU topology, from any host (no TPU).

  python -m tensorcache.compile_tpu --config=configs/base.py:gpt2,tc --topology=v5e:2x2 \
      [--config.train.batch_size=64 ...] [--noinference] [--search] [--table]

With ``libtpu`` installed (the ``[tpu]`` extra), JAX describes a TPU slice it does not own
and compiles for it. This compiles the trainer's own train step (``train.lower_train_step``:
optimiser, accumulation, the config's mesh and rule shardings, donation) on abstract
parameters and batches (nothing is materialised), then ``inference.prefill`` (the batch's
sequences, ``train.seq_len`` tokens) and ``inference.decode_step``, and prints per chip:
memory (arguments, outputs, temporaries, total against the chip's HBM), FLOPs from the cost
analysis, and compile time.

A train step that does not fit (the compiler refuses it, or its total exceeds the HBM) ends
the command with exit status 2 and one line on stderr naming the largest per-chip batch that
compiles within the HBM (found by compiling: ``search_batch``). ``--search`` finds
that largest batch even when the configured one fits (``docs/tpu.md``'s fit table);
``--table`` prints the result as one row of that table.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
import time
from collections.abc import Callable

# Compiling for a topology needs no local TPU: keep JAX off any TPU this host has, and let
# a second process (another compile, a test worker) load libtpu alongside.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags, logging  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from tensorcache import inference, sharding, train  # noqa: E402
from tensorcache.model import GPT  # noqa: E402

GiB = 2**30
# HBM per chip (Cloud TPU system architecture pages); v4 and v5p as megacore chips.
HBM_GIB = {"v4": 32, "v5e": 16, "v5p": 95, "v6e": 32}
MEGACORE = ("v4", "v5p")


class DoesNotFit(Exception):
  """The compiler refused a step for lack of memory, or its total exceeds the chip's HBM
  (``total``: the compiled step's bytes per chip; None when the compiler refused it)."""

  def __init__(self, message: str, total: int | None = None):
    super().__init__(message)
    self.total = total


@dataclasses.dataclass(frozen=True)
class Compiled:
  """One step compiled for a topology: bytes per chip, FLOPs per chip, compile seconds."""
  name: str
  arguments: int
  outputs: int
  aliased: int
  temporaries: int
  flops: float
  seconds: float

  @property
  def total(self) -> int:
    """Live bytes per chip at the peak: arguments + outputs - donated aliases + temporaries."""
    return self.arguments + self.outputs - self.aliased + self.temporaries

  def line(self, hbm: int) -> str:
    g = lambda b: f"{b / GiB:.3f}"
    return (f"{self.name:<7} per chip: arguments {g(self.arguments)} GiB, outputs {g(self.outputs)} GiB "
            f"(donated {g(self.aliased)}), temporaries {g(self.temporaries)} GiB, total {g(self.total)} / "
            f"{g(hbm)} GiB HBM; {self.flops:.3e} FLOPs; compiled in {self.seconds:.1f} s")


def topology_devices(name: str) -> list:
  """The compile-only devices of a topology ``gen:AxB[xC]`` (``v5e:2x2``, ``v4:2x2x2``), one
  per chip: megacore for v4 / v5p; v5e / v6e slices of up to 8 chips as one host."""
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top

  gen, _, shape = name.partition(":")
  if gen not in HBM_GIB:
    raise ValueError(f"unknown TPU generation {gen!r} in --topology={name}; known: {sorted(HBM_GIB)}")
  dims = [int(d) for d in shape.split("x")]
  kwargs = {}
  if gen in MEGACORE:
    kwargs["chip_config_name"] = "megacore"
  elif int(np.prod(dims)) <= 8:
    kwargs["chips_per_host_bounds"] = (*dims, 1)[:3]
  return list(topologies.get_topology_desc(platform="tpu", topology_name=name, **kwargs).devices)


def hbm_bytes(topology: str) -> int:
  return HBM_GIB[topology.partition(":")[0]] * GiB


def _is_out_of_memory(e: Exception) -> bool:
  """The compiler refused the program for lack of HBM (not a kernel's VMEM, which a smaller
  batch does not cure)."""
  msg = str(e)
  return ("RESOURCE_EXHAUSTED" in msg or "Ran out of memory" in msg) and "memory space vmem" not in msg.lower()


def _compile(name: str, lowered_fn, hbm: int) -> Compiled:
  """Compiles ``lowered_fn()``; raises ``DoesNotFit`` when it needs more than ``hbm``."""
  start = time.perf_counter()
  try:
    compiled = lowered_fn().compile()
  except Exception as e:  # pylint: disable=broad-exception-caught - XLA's error type varies
    if _is_out_of_memory(e):
      raise DoesNotFit(f"{name}: {str(e).splitlines()[0]}") from e
    raise
  seconds = time.perf_counter() - start
  mem = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  out = Compiled(name, mem.argument_size_in_bytes, mem.output_size_in_bytes, mem.alias_size_in_bytes,
                 mem.temp_size_in_bytes, float(cost.get("flops", float("nan"))), seconds)
  if out.total > hbm:
    raise DoesNotFit(f"{name}: {out.total / GiB:.2f} GiB per chip > {hbm / GiB:.2f} GiB HBM", out.total)
  return out


def _batch(rows: int, seq_len: int, mesh) -> dict[str, jax.ShapeDtypeStruct]:
  """The trainer's batch (``sharding.shard_batch`` of the data pipeline's rows), abstract."""
  spec = sharding.batch_sharding(mesh)
  return {"inputs": jax.ShapeDtypeStruct((rows, seq_len), jnp.int32, sharding=spec),
          "targets": jax.ShapeDtypeStruct((rows, seq_len), jnp.int32, sharding=spec),
          "weights": jax.ShapeDtypeStruct((rows, seq_len), jnp.float32, sharding=spec)}


def with_batch(config: ml_collections.ConfigDict, per_chip: int, chips: int) -> ml_collections.ConfigDict:
  """A copy of ``config`` with ``train.batch_size = per_chip * chips``."""
  config = ml_collections.ConfigDict(config.to_dict())
  config.train.batch_size = per_chip * chips
  return config


def compile_train(config: ml_collections.ConfigDict, devices: list, hbm: int) -> Compiled:
  """The trainer's train step of ``config`` over ``devices``; raises ``DoesNotFit``."""
  spec = train.step_spec(config, devices)
  state = train.abstract_train_state(spec, int(config.train.seed))
  batch = _batch(int(config.train.batch_size), int(config.train.seq_len), spec.mesh)
  return _compile("train", lambda: train.lower_train_step(spec, state, batch), hbm)


def compile_inference(config: ml_collections.ConfigDict, devices: list, hbm: int) -> list[Compiled]:
  """The prefill of ``train.batch_size`` prompts of ``train.seq_len`` tokens (the program
  ``inference.prefill`` runs: chunks of ``inference.PREFILL_CHUNK``, the last logits) and
  ``inference.decode_step`` of one token each: parameters in the trainer's rule shardings,
  tokens and cache split over the batch (cache counters replicated), the cache an argument
  and donated in both."""
  spec = train.step_spec(config, devices)
  model = GPT(spec.model)
  params = train.abstract_train_state(spec, int(config.train.seed)).params
  rows, seq_len = int(config.train.batch_size), int(config.train.seq_len)
  tokens = _batch(rows, seq_len, spec.mesh)["inputs"]
  step_tokens = jax.ShapeDtypeStruct((rows,), jnp.int32, sharding=sharding.batch_sharding(spec.mesh, 1))
  cache = jax.eval_shape(functools.partial(inference.init_cache, spec.model, rows))
  rep = sharding.replicated(spec.mesh)
  by_batch = lambda x: jax.ShapeDtypeStruct(
      x.shape, x.dtype, sharding=NamedSharding(spec.mesh, sharding.batch_spec(x.ndim)))
  cache = cache._replace(pos=jax.ShapeDtypeStruct(cache.pos.shape, cache.pos.dtype, sharding=rep),
                         slot_pos=jax.ShapeDtypeStruct(cache.slot_pos.shape, cache.slot_pos.dtype, sharding=rep),
                         layers=jax.tree.map(by_batch, cache.layers))
  decode = jax.jit(inference.decode_step, static_argnums=0, donate_argnums=2)
  with jax.set_mesh(spec.mesh):  # as the trainer's steps: splash must see the mesh
    stream = inference._stream_jit  # pylint: disable=protected-access  # prefill's program, cache given
    chunk = inference.PREFILL_CHUNK
    return [_compile("prefill", lambda: stream.lower(model, "last", chunk, params, cache, tokens, None), hbm),
            _compile("decode", lambda: decode.lower(model, params, cache, step_tokens), hbm)]


def search_batch(fits: Callable[[int], bool], start: int, unit: int, hbm: int, sizes: dict[int, int]) -> int:
  """The largest multiple ``b`` of ``unit`` with ``fits(b)`` (0 if not even ``unit`` fits),
  for ``fits`` monotone (true up to some batch, false beyond).

  ``fits`` records in ``sizes`` the bytes per chip of every batch it compiled (fitting or
  not; a step the compiler refused has none). Memory grows about linearly with the batch, so
  once two sizes are known the next batch tried is where the line through the two nearest
  the HBM crosses it, if that is inside the interval still unknown (else a bisection: a
  refused step records no size, so the line may point past it again); after two guesses in a
  row that did not halve that interval comes a bisection, so the search takes at most about
  three times bisection's compiles (four in all when memory is exactly linear). Before two
  sizes are known: halving from ``start`` while it does not fit, doubling while it does; and
  doubling again when the line twice in a row points at or below the largest fitting batch
  while nothing has failed (memory flat or not monotone at small batches), instead of trying
  one unit more each time. The answer is a batch that fits
  next to one that does not (or to 0), both compiled.
  """
  lo, hi = 0, None  # the largest batch known to fit (0: none yet), the smallest known not to
  b, guessed, slow = start, False, 0  # slow: guesses in a row that did not halve the interval
  clamped = False  # the last line guess pointed at or below the largest fitting batch
  while True:
    width = None if hi is None else hi - lo
    if fits(b):
      lo = b
    else:
      hi = b
    if hi is not None and hi - lo <= unit:
      return lo
    slow = slow + 1 if guessed and width is not None and 2 * (hi - lo) > width else 0
    b, guessed, was_clamped = _next_batch(lo, hi, unit, hbm, sizes, bisect=slow >= 2)
    slow = 0 if not guessed else slow
    if was_clamped and clamped and hi is None:  # twice, and all so far fit: memory is flat here,
      b, guessed, was_clamped = 2 * lo, False, False  # so double rather than creep a unit a compile
    clamped = was_clamped


def _next_batch(lo: int, hi: int | None, unit: int, hbm: int, sizes: dict[int, int],
                bisect: bool) -> tuple[int, bool, bool]:
  """The next batch ``search_batch`` compiles (strictly between ``lo`` and ``hi``), whether it
  is a guess from the sizes, and whether that guess pointed at or below ``lo`` (raised to
  ``lo + unit``)."""
  top = None if hi is None else hi - unit
  if not bisect and len(sizes) >= 2:
    (b1, m1), (b2, m2) = sorted(sorted(sizes.items(), key=lambda bm: abs(bm[1] - hbm))[:2])
    guess = (b1 + (hbm - m1) * (b2 - b1) // (m2 - m1)) // unit * unit if m2 > m1 else None
    # A line that points at or past a batch already known not to fit (one the compiler refused
    # records no size, so the line stays where it was) says nothing new: bisect instead.
    if guess is not None and (top is None or guess <= top):
      return max(lo + unit, guess), True, guess <= lo
  if hi is None:
    return 2 * lo, False, False
  if lo == 0:
    return max(unit, hi // 2 // unit * unit), False, False
  return (lo + hi) // 2 // unit * unit, False, False


def largest_fitting(config: ml_collections.ConfigDict, devices: list, hbm: int, start: int,
                    at_start: Compiled | DoesNotFit) -> tuple[int, Compiled | None]:
  """The largest per-chip batch (a multiple of ``optim.accum_steps``) whose train step fits,
  and its compile, by ``search_batch`` from ``start`` (``at_start``: the outcome of compiling
  it). ``(0, None)``: nothing fits."""
  memo: dict[int, Compiled | None] = {start: at_start if isinstance(at_start, Compiled) else None}
  sizes: dict[int, int] = {start: at_start.total} if at_start.total is not None else {}

  def fits(b: int) -> bool:
    if b not in memo:
      t0 = time.perf_counter()
      try:
        memo[b] = compile_train(with_batch(config, b, len(devices)), devices, hbm)
        sizes[b] = memo[b].total
      except DoesNotFit as e:
        memo[b] = None
        if e.total is not None:
          sizes[b] = e.total
      outcome = "fits" if memo[b] else "does not fit" if b in sizes else "refused by the compiler"
      size = f", {sizes[b] / GiB:.2f} GiB" if b in sizes else ""
      logging.info("search: %d per chip %s (%.0f s%s)", b, outcome, time.perf_counter() - t0, size)
    return memo[b] is not None

  best = search_batch(fits, start, int(config.optim.accum_steps), hbm, sizes)
  return best, memo.get(best)


def fit_or_exit(config: ml_collections.ConfigDict, topology: str, devices: list, hbm: int) -> Compiled:
  """The train step of ``config`` compiled over ``devices``; when it does not fit, one line
  on stderr naming the largest per-chip batch that does, then ``SystemExit(2)``."""
  chips, seq_len = len(devices), int(config.train.seq_len)
  per_chip = int(config.train.batch_size) // chips
  try:
    return compile_train(config, devices, hbm)
  except DoesNotFit as e:
    best, _ = largest_fitting(config, devices, hbm, per_chip, e)
    unit, mesh = int(config.optim.accum_steps), train.step_spec(config, devices).mesh
    shard_more = ("raise --config.train.mesh.fsdp" if mesh.shape["fsdp"] * mesh.shape["seq"] < chips
                  else "the parameters are sharded as far as the mesh goes: a larger topology or a smaller model")
    fix = (f"the largest that fits is {best} per chip: --config.train.batch_size={best * chips}" if best
           else f"not even {unit} sequence{'s' * (unit > 1)} per chip (optim.accum_steps) fits: {shard_more}")
    print(f"does not fit on {topology}: {per_chip} sequences of {seq_len} per chip ({e}); {fix}", file=sys.stderr)
    raise SystemExit(2) from None


# ------------------------------------------------------------------ command line

config_flags.DEFINE_config_file("config", None, "Run config file, e.g. configs/base.py:gpt2,tc.",
                                lock_config=True)
flags.DEFINE_string("topology", "v5e:2x2", "TPU topology, e.g. v5e:2x2, v5e:4x4, v4:2x2x1, v5p:2x2x1.")
flags.DEFINE_bool("inference", True, "Also compile the prefill and the decode step.")
flags.DEFINE_bool("search", False, "Find the largest per-chip batch that fits even when the configured one does.")
flags.DEFINE_bool("table", False, "Print the result as a row of docs/tpu.md's fit table.")
flags.mark_flags_as_required(["config"])


def accelerator_type(topology: str) -> str:
  """The Cloud TPU accelerator type of a topology (``v5e:2x4`` -> ``v5litepod-8``, ``v4:2x2x1``
  -> ``v4-8``): what ``gcloud`` and ``scripts/launch_tpu.sh`` call the slice."""
  gen, _, shape = topology.partition(":")
  chips = int(np.prod([int(d) for d in shape.split("x")]))
  return {"v5e": f"v5litepod-{chips}", "v6e": f"v6e-{chips}"}.get(gen, f"{gen}-{2 * chips}")  # v4/v5p: cores


def table_row(config: ml_collections.ConfigDict, topology: str, step: Compiled, per_chip: int, chips: int) -> str:
  """One row of ``docs/tpu.md``'s fit table: the config argument (preset, mechanism), the
  rule and the settings the table varies, the topology, the batch, the memory, the compile."""
  model = config.model
  arg = config_flags.get_config_filename(flags.FLAGS["config"]).partition(":")[2] or "default"
  preset = arg.partition(",")[0]
  name = preset + (f" (vocab {model.vocab_size})" if model.vocab_size != 256 else "")
  name += f", {model.mechanism}" + (f" ({model.rule})" if model.mechanism == "tc" else "")
  name += (f", remat={model.remat}" if model.remat != "none" else "") + f", fsdp={config.train.mesh.fsdp}"
  return (f"| {name} | {topology} ({accelerator_type(topology)}) | {per_chip * chips} ({per_chip}) | yes "
          f"| {step.total / GiB:.2f} GiB | {step.seconds:.0f} s |")


def main(argv) -> None:
  del argv
  FLAGS = flags.FLAGS
  config, topology = FLAGS.config, FLAGS.topology
  devices = topology_devices(topology)
  chips, hbm = len(devices), hbm_bytes(topology)
  per_chip = int(config.train.batch_size) // chips
  try:
    if per_chip * chips != int(config.train.batch_size):
      raise ValueError(f"train.batch_size={config.train.batch_size} does not split over the {chips} chips")
    mesh = train.step_spec(config, devices).mesh
  except ValueError as e:
    print(f"cannot compile for {topology}: {e}", file=sys.stderr)
    sys.exit(2)
  hosts = len({d.process_index for d in devices})
  print(f"{topology} ({accelerator_type(topology)}): {chips} chips on {hosts} host{'s' * (hosts > 1)}, "
        f"{hbm / GiB:.0f} GiB HBM each; mesh {dict(mesh.shape)}; batch {per_chip} x {config.train.seq_len} "
        "tokens per chip")
  if FLAGS.search:  # from the configured batch, up or down
    try:
      outcome = compile_train(config, devices, hbm)
    except DoesNotFit as e:
      outcome = e
    per_chip, step = largest_fitting(config, devices, hbm, per_chip, outcome)
    if step is None:
      print(f"does not fit on {topology}: not even {config.optim.accum_steps} sequence(s) per chip", file=sys.stderr)
      sys.exit(2)
    print(f"largest batch that fits: {per_chip} per chip, --config.train.batch_size={per_chip * chips}")
    config = with_batch(config, per_chip, chips)
  else:
    step = fit_or_exit(config, topology, devices, hbm)
  print(step.line(hbm))
  if FLAGS.table:
    print(table_row(config, topology, step, per_chip, chips))
  if FLAGS.inference:
    try:
      for c in compile_inference(config, devices, hbm):
        print(c.line(hbm))
    except DoesNotFit as e:
      print(f"does not fit on {topology}: {per_chip} sequences of {config.train.seq_len} per chip ({e}); the "
            "train step fits: serve fewer sequences per chip (--config.train.batch_size) or skip "
            "this check with --noinference", file=sys.stderr)
      sys.exit(2)


if __name__ == "__main__":
  app.run(main)
