"""The delta rule's state-pass kernels (``pallas_kernels/delta_states``) against their
``lax.scan`` reference and, through ``memory.memory_scan``, against the per-token oracle:
outputs and the gradients of every input, chunk counts that are not powers of two, C < D,
C = D and C > D, both read orders, T not a multiple of C. Pallas interpret mode on CPU; on a
machine whose default JAX backend is a GPU (``JAX_PLATFORMS=cuda,cpu``) the kernels run
compiled, with the products the dispatch seam uses there (three TF32 passes). The dispatch
seam's choice is checked by lowering for CUDA on this host.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import pytest

from pallas_kernels.delta_states import ops, reference
from tensorcache import dispatch, memory
from _util import assert_close, normal

ON_GPU = jax.devices()[0].platform == "gpu"
KERNEL = functools.partial(ops.delta_states, precision="tf32x3") if ON_GPU else functools.partial(
    ops.delta_states, interpret=True)
TOL = 1e-5


def _fields(seed, B, H, N, C, D):
  U = normal(seed, (B, H, N, C, D))
  Wk = normal(seed + 1, (B, H, N, C, D), 0.1)
  Kw = normal(seed + 2, (B, H, N, C, D), 0.1)
  lam = jax.random.uniform(jax.random.PRNGKey(seed + 3), (H, N), minval=0.5, maxval=1.0)
  S0 = normal(seed + 4, (B, H, D, D))
  cts = (normal(seed + 5, (B, H, N, C, D)), normal(seed + 6, (B, H, N, D, D)), normal(seed + 7, (B, H, D, D)))
  return (U, Wk, Kw, lam, S0), cts


@pytest.mark.parametrize("N,C,D", [(5, 16, 32), (3, 64, 16), (7, 32, 64), (2, 16, 128)])
def test_kernels_match_reference(N, C, D):
  args, cts = _fields(10 * N + D, 2, 3, N, C, D)
  loss = lambda f: (lambda *a: sum(jnp.sum(x * c) for x, c in zip(f(*a), cts)))
  for got, want, what in zip(KERNEL(*args), reference.delta_states(*args), ("W", "S_in", "S")):
    assert_close(got, want, TOL, what)
  got = jax.grad(loss(KERNEL), argnums=range(5))(*args)
  want = jax.grad(loss(reference.delta_states), argnums=range(5))(*args)
  for g, w, what in zip(got, want, ("dU", "dWk", "dKw", "dlam", "dS0")):
    assert_close(g, w, TOL, what)


@pytest.mark.parametrize("read_first", [False, True])
def test_memory_scan_with_kernel_matches_oracle(read_first):
  """The chunked delta rule with its states from the kernel equals the per-token recurrence
  (reads, final state, gradients of q, k, v, the log decays, the write rate and A)."""
  B, T, H, D, C = 2, 45, 2, 32, 16
  q, v = normal(1, (B, T, H, D)), normal(3, (B, T, H, D))
  k = memory.normalize_key(normal(2, (B, T, H, D)))
  valid = jax.random.uniform(jax.random.PRNGKey(4), (T,)) < 0.9
  g = memory.log_decay(jnp.log(jax.random.uniform(jax.random.PRNGKey(5), (H,), minval=0.7, maxval=0.99)), valid)
  eta = jax.random.uniform(jax.random.PRNGKey(6), (H,), minval=0.2, maxval=1.0)
  A = normal(7, (B, H, D, D), 0.1)
  ct = normal(8, (B, T, H, D))

  def run(states):
    def f(q, k, v, g, eta, A):
      if states is None:
        return memory.memory_recurrence(q, k, v, g, eta, A, "delta", read_first)
      return memory.memory_scan(q, k, v, g, eta, A, "delta", C, read_first, delta_states=states)
    return f

  loss = lambda f: (lambda *a: jnp.sum(f(*a)[0] * ct) + jnp.sum(jnp.sin(f(*a)[2])))
  got, want = run(KERNEL)(q, k, v, g, eta, A), run(None)(q, k, v, g, eta, A)
  assert_close(got[0], want[0], TOL, "reads")
  assert_close(got[2], want[2], TOL, "final state")
  got = jax.grad(loss(run(KERNEL)), argnums=range(6))(q, k, v, g, eta, A)
  want = jax.grad(loss(run(None)), argnums=range(6))(q, k, v, g, eta, A)
  for a, b, what in zip(got, want, ("dq", "dk", "dv", "dg", "deta", "dA")):
    assert_close(a, b, 5 * TOL, what)


def _cuda_triton_calls(rule, D, chunk=16, T=64, from_map=False):
  s = lambda shape, dtype=jnp.bfloat16: jax.ShapeDtypeStruct(shape, dtype)
  args = [s((2, T, 2, D))] * 3 + [s((T, 2), jnp.float32), s((2,), jnp.float32), s((2, 2, D, D), jnp.float32)]

  def loss(*a):
    A0 = (lambda Phi, Psi: a[5] + Psi) if from_map else a[5]
    r, _, A, _ = dispatch.l2_scan(*a[:5], A0, rule=rule, chunk=chunk)
    return jnp.sum(r * r) + jnp.sum(A)

  lowered = jax.jit(jax.grad(loss, argnums=range(6))).trace(*args).lower(lowering_platforms=("cuda",))
  return lowered.as_text().count("__gpu$xla.gpu.triton")


def test_dispatch_runs_kernels_on_cuda_where_supported():
  """``Impl.AUTO`` lowered for CUDA: the delta rule's states by the two kernels (forward and
  backward, through the Triton lowering) at D = 64 and 128; the XLA scan for a head dim the
  kernels do not take and for the other rules. An entering state from the stream's map (as
  sequence parallelism passes it) takes the kernels too."""
  assert _cuda_triton_calls("delta", 64) == 2
  assert _cuda_triton_calls("delta", 64, from_map=True) == 2
  assert _cuda_triton_calls("delta", 128) == 2
  assert _cuda_triton_calls("delta", 24) == 0
  assert _cuda_triton_calls("outer", 64) == 0


def test_unsupported_shapes_raise():
  args, _ = _fields(0, 1, 1, 2, 16, 8)
  with pytest.raises(ValueError, match="powers of two from 16 to 128"):
    ops.delta_states(*args, interpret=True)


def test_entering_state_from_the_stream_map():
  """An entering state given as a function of the stream's own map ``(Phi, Psi)`` (as
  sequence parallelism passes it): the kernel's widened pass ``[Z | P]`` equals the XLA
  form's scan of maps, reads, final state and gradients (through the function too)."""
  B, T, H, D, C = 1, 40, 2, 16, 16
  q, v = normal(11, (B, T, H, D)), normal(13, (B, T, H, D))
  k = memory.normalize_key(normal(12, (B, T, H, D)))
  g = memory.log_decay(jnp.log(jax.random.uniform(jax.random.PRNGKey(14), (H,), minval=0.7, maxval=0.99)),
                       jnp.ones((T,), bool))
  eta = jax.random.uniform(jax.random.PRNGKey(15), (H,), minval=0.2, maxval=1.0)
  A = normal(16, (B, H, D, D), 0.1)
  ct = normal(17, (B, T, H, D))

  def run(states):
    def f(q, k, v, g, eta, A):
      entering = lambda Phi, Psi: A + 0.5 * (jnp.einsum("bhij,bhjk->bhik", Phi, A) + Psi)
      return memory.memory_scan(q, k, v, g, eta, entering, "delta", C, delta_states=states)
    return f

  loss = lambda f: (lambda *a: jnp.sum(f(*a)[0] * ct) + jnp.sum(jnp.sin(f(*a)[2])))
  got, want = run(KERNEL)(q, k, v, g, eta, A), run(None)(q, k, v, g, eta, A)
  assert_close(got[0], want[0], TOL, "reads")
  assert_close(got[2], want[2], TOL, "final state")
  got = jax.grad(loss(run(KERNEL)), argnums=range(6))(q, k, v, g, eta, A)
  want = jax.grad(loss(run(None)), argnums=range(6))(q, k, v, g, eta, A)
  for a, b, what in zip(got, want, ("dq", "dk", "dv", "dg", "deta", "dA")):
    assert_close(a, b, 5 * TOL, what)
