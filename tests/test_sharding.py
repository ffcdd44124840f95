"""Sharding: the mesh, the parameter rules (raise on an unmatched parameter), and the
invariant that a train step on a ("data", "fsdp") = (2, 4) mesh of the 8 fake CPU devices
equals the same step on one device."""

from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from test_train import factory, fixed_batch, leaves, one_step, single_device_mesh, step_config
from tensorcache import checkpoint, optim, sharding, train
from tensorcache.config import ModelConfig


def test_mesh_from_config_on_one_or_many_devices():
  assert jax.device_count() == 8, "tests/conftest.py sets 8 fake CPU devices"
  assert dict(sharding.make_mesh(-1, 1).shape) == {"data": 8, "fsdp": 1, "seq": 1}
  assert dict(sharding.make_mesh(2, -1).shape) == {"data": 2, "fsdp": 4, "seq": 1}
  assert dict(sharding.make_mesh(2, 4).shape) == {"data": 2, "fsdp": 4, "seq": 1}
  assert dict(sharding.make_mesh(-1, 1, seq=4).shape) == {"data": 2, "fsdp": 1, "seq": 4}
  assert dict(sharding.make_mesh(2, -1, seq=2).shape) == {"data": 2, "fsdp": 2, "seq": 2}
  assert dict(single_device_mesh().shape) == {"data": 1, "fsdp": 1, "seq": 1}
  assert all(t == jax.sharding.AxisType.Auto for t in sharding.make_mesh(2, 4).axis_types)
  with pytest.raises(ValueError, match="does not cover"):
    sharding.make_mesh(3, 1)
  with pytest.raises(ValueError, match="does not cover"):
    sharding.make_mesh(-1, 1, seq=3)
  with pytest.raises(ValueError, match="At most one"):
    sharding.make_mesh(-1, -1)


def test_fsdp_shards_the_largest_divisible_axis_and_replicates_vectors():
  spec = sharding.leaf_spec
  assert spec("params/blocks_0/attn/c_attn/kernel", (64, 192), 4) == P(None, "fsdp")
  assert spec("params/wte/embedding", (256, 64), 4) == P("fsdp", None)
  assert spec("params/blocks_0/attn/c_proj/kernel", (12, 6), 4) == P("fsdp", None)  # 12 % 4 == 0
  assert spec("params/blocks_0/attn/c_proj/kernel", (6, 10), 4) == P(None, None)  # none divides
  assert spec("params/blocks_0/attn/c_attn/kernel", (64, 192), 1) == P(None, None)
  assert spec("params/blocks_0/ln1/scale", (64,), 4) == P()
  assert spec("params/blocks_0/attn/gate", (1,), 4) == P()
  assert spec("params/blocks_0/attn/decay_logit", (4,), 4) == P()
  assert spec("1/0/count", (), 4) == P()


def test_unmatched_parameter_raises():
  mesh = sharding.make_mesh(2, 4)
  with pytest.raises(sharding.UnmatchedParameterError, match="params/blocks_0/attn/mystery"):
    sharding.tree_shardings({"params": {"blocks_0": {"attn": {"mystery": jnp.zeros((4,))}}}}, mesh)
  # A replicate rule never takes a matrix that happens to share a vector's name.
  with pytest.raises(sharding.UnmatchedParameterError, match="ndim <= 1"):
    sharding.tree_shardings({"params": {"gate": jnp.zeros((4, 4))}}, mesh)


VARIANTS = {
    "tc": dict(mechanism="tc"),
    "tc_options": dict(mechanism="tc", per_token_gate=True, two_timescales=True, memory_layers=1),
    "infini": dict(mechanism="infini"),
    "sinks": dict(mechanism="sinks"),
    "full": dict(mechanism="full"),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_rules_cover_every_parameter_and_optimizer_leaf(variant):
  cfg = ModelConfig(**VARIANTS[variant])
  mesh = sharding.make_mesh(2, 4)
  params = checkpoint.abstract_params(cfg)
  opt_state = jax.eval_shape(optim.make_optimizer(optim.OptimConfig()).init, params)
  specs = sharding.tree_specs({"params": params, "opt_state": opt_state}, mesh)
  flat = jax.tree_util.tree_flatten_with_path(specs, is_leaf=lambda x: isinstance(x, P))[0]
  for path, spec in flat:
    name = sharding.path_name(path)
    if name.endswith(("kernel", "embedding")):
      assert "fsdp" in tuple(spec), (name, spec)  # every matrix here has an axis divisible by 4
    else:
      assert spec == P(), (name, spec)


def test_sharded_train_step_equals_single_device():
  config = step_config()
  batch = fixed_batch(config)
  mesh = sharding.make_mesh(2, 4)
  init_1, one, m_one = one_step(config, batch, single_device_mesh())
  init_8, many, m_many = one_step(config, batch, mesh)
  for a, b in zip(leaves(init_8), leaves(init_1)):
    np.testing.assert_array_equal(a, b)  # the same initial parameters, however sharded
  np.testing.assert_allclose(m_many["loss"], m_one["loss"], rtol=1e-6)
  moved = max(np.abs(a - b).max() for a, b in zip(leaves(one.params), leaves(init_1)))
  assert moved > 5e-4
  for a, b in zip(leaves(many.params), leaves(one.params)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_sharded_run_checkpoints_and_restores_into_the_rule_shardings(tmp_path):
  config = step_config()
  with config.unlocked():
    config.train.mesh.update(data=2, fsdp=4)
  state = train.train(config, str(tmp_path), make_iterator=factory())
  kernel = state.params["params"]["blocks_0"]["attn"]["c_attn"]["kernel"]
  assert kernel.sharding.spec == P(None, "fsdp") and len(kernel.sharding.device_set) == 8
  restored = train.train(config, str(tmp_path), make_iterator=factory())  # complete: restores only
  for a, b in zip(jax.tree.leaves(restored.params), jax.tree.leaves(state.params)):
    assert a.sharding.is_equivalent_to(b.sharding, a.ndim)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
