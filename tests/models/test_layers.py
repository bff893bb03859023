"""The reshape max-pool against flax's reduce_window max-pool: same values, same gradients without ties."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_med.models import layers


@pytest.mark.parametrize("shape,size", [((2, 8, 8, 3), (2, 2)), ((3, 7, 9, 2), (2, 2)), ((1, 9, 6, 4), (3, 2))])
def test_max_pool_blocks_equals_flax_max_pool_values_and_gradient(shape, size):
  x = jax.random.normal(jax.random.PRNGKey(0), shape)  # continuous: no two entries of a window tie
  cotangent = jax.random.normal(jax.random.PRNGKey(1), layers.max_pool_blocks(x, size).shape)
  ours = lambda x: jnp.sum(layers.max_pool_blocks(x, size) * cotangent)
  flax = lambda x: jnp.sum(nn.max_pool(x, size, strides=size) * cotangent)
  np.testing.assert_array_equal(layers.max_pool_blocks(x, size), nn.max_pool(x, size, strides=size))
  np.testing.assert_array_equal(jax.grad(ours)(x), jax.grad(flax)(x))


def test_max_pool_blocks_after_relu_has_flax_gradient_although_windows_of_zeros_tie():
  x = jax.random.normal(jax.random.PRNGKey(2), (4, 6, 6, 3)) - 1.0  # most windows are all zeros after the ReLU
  relu_pool = lambda pool: jax.grad(lambda x: jnp.sum(jnp.sin(pool(jax.nn.relu(x)))))(x)
  assert float(jnp.mean(layers.max_pool_blocks(jax.nn.relu(x)) == 0)) > 0.3
  np.testing.assert_array_equal(relu_pool(layers.max_pool_blocks),
                                relu_pool(lambda y: nn.max_pool(y, (2, 2), strides=(2, 2))))


def test_max_pool_blocks_splits_a_tie_equally():
  x = jnp.array([[1.0, 1.0], [0.0, -1.0]]).reshape(1, 2, 2, 1)
  np.testing.assert_array_equal(jax.grad(lambda x: layers.max_pool_blocks(x).sum())(x).reshape(2, 2),
                                [[0.5, 0.5], [0.0, 0.0]])


@pytest.mark.parametrize("size", [(2, 2), (3, 2)])
def test_block_conv_transpose_equals_flax_conv_transpose(size):
  x = jax.random.normal(jax.random.PRNGKey(3), (2, 5, 4, 3))
  ours, flax = layers.BlockConvTranspose(6, size), nn.ConvTranspose(6, size, strides=size)
  key = jax.random.PRNGKey(4)
  params = ours.init(key, x)
  flax_params = jax.tree.map(np.asarray, flax.init(key, x))
  jax.tree.map(np.testing.assert_array_equal, params, flax_params)  # same names, shapes, initial values
  params = jax.tree.map(lambda p: p + jax.random.normal(key, p.shape), params)  # a non-zero bias too
  cotangent = jax.random.normal(jax.random.PRNGKey(5), (2, 5 * size[0], 4 * size[1], 6))
  loss = lambda module: lambda p, x: jnp.sum(module.apply(p, x) * cotangent)
  np.testing.assert_allclose(ours.apply(params, x), flax.apply(params, x), rtol=1e-5, atol=1e-5)
  for a, b in zip(jax.tree.leaves(jax.grad(loss(ours), argnums=(0, 1))(params, x)),
                  jax.tree.leaves(jax.grad(loss(flax), argnums=(0, 1))(params, x)), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def _batch_norms(momentum=0.9):
  return layers.BatchNorm(momentum=momentum), nn.BatchNorm(momentum=momentum)


def test_batch_norm_equals_flax_batch_norm_in_both_modes():
  x = 3.0 + 2.0 * jax.random.normal(jax.random.PRNGKey(6), (4, 5, 6, 3))
  ours, flax = _batch_norms()
  variables = ours.init(jax.random.PRNGKey(7), x, use_running_average=False)
  jax.tree.map(np.testing.assert_array_equal, variables, flax.init(jax.random.PRNGKey(7), x, use_running_average=False))
  variables = {"params": jax.tree.map(lambda p: p + jax.random.uniform(jax.random.PRNGKey(8), p.shape),
                                      variables["params"]), "batch_stats": variables["batch_stats"]}
  y_ours, stats_ours = ours.apply(variables, x, use_running_average=False, mutable=["batch_stats"])
  y_flax, stats_flax = flax.apply(variables, x, use_running_average=False, mutable=["batch_stats"])
  np.testing.assert_allclose(y_ours, y_flax, rtol=1e-6, atol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), stats_ours, stats_flax)
  np.testing.assert_allclose(ours.apply({**variables, **stats_ours}, x, use_running_average=True),
                             flax.apply({**variables, **stats_flax}, x, use_running_average=True), rtol=1e-6, atol=1e-6)


def test_batch_norm_gradient_equals_flax_through_outputs_and_running_statistics():
  x = 1.0 + jax.random.normal(jax.random.PRNGKey(9), (3, 4, 4, 5))
  cotangent = jax.random.normal(jax.random.PRNGKey(10), x.shape)
  weights = jax.random.normal(jax.random.PRNGKey(11), (2, 5))

  def loss(module):
    def f(params, x):
      y, stats = module.apply({"params": params, "batch_stats": {"mean": jnp.zeros(5), "var": jnp.ones(5)}}, x,
                              use_running_average=False, mutable=["batch_stats"])
      s = stats["batch_stats"]  # a loss on the updated running statistics exercises their cotangents too
      return jnp.sum(y * cotangent) + jnp.sum(weights[0] * s["mean"]) + jnp.sum(weights[1] * s["var"])
    return f

  ours, flax = _batch_norms()
  params = {"scale": jnp.linspace(0.5, 1.5, 5), "bias": jnp.linspace(-1, 1, 5)}
  for a, b in zip(jax.tree.leaves(jax.grad(loss(ours), argnums=(0, 1))(params, x)),
                  jax.tree.leaves(jax.grad(loss(flax), argnums=(0, 1))(params, x)), strict=True):
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize("groups", [2, 3])
def test_grouped_batch_norm_equals_one_call_per_slice_of_the_batch(groups):
  """``groups`` slices of the batch in one call: outputs, gradients (input, scale, bias) and running statistics
  equal ``groups`` calls one after another (momentum 0.7 so that the order of the updates shows)."""
  x = 1.0 + jax.random.normal(jax.random.PRNGKey(20), (groups * 4, 5, 5, 3)) * jnp.repeat(
      jnp.arange(1.0, groups + 1), 4)[:, None, None, None]  # each slice its own spread
  grouped, single = layers.BatchNorm(momentum=0.7, groups=groups), layers.BatchNorm(momentum=0.7)
  variables = single.init(jax.random.PRNGKey(21), x[:4], use_running_average=False)
  params = {"scale": 1.0 + jnp.arange(3.0), "bias": jnp.arange(3.0) - 1.0}
  cotangent = jax.random.normal(jax.random.PRNGKey(22), x.shape)

  def one_call(params, x):
    y, new = grouped.apply({"params": params, "batch_stats": variables["batch_stats"]}, x,
                           use_running_average=False, mutable=["batch_stats"])
    return jnp.sum(y * cotangent), (y, new["batch_stats"])

  def one_per_slice(params, x):
    stats, ys = variables["batch_stats"], []
    for part in jnp.split(x, groups):
      y, new = single.apply({"params": params, "batch_stats": stats}, part, use_running_average=False,
                            mutable=["batch_stats"])
      stats = new["batch_stats"]
      ys.append(y)
    y = jnp.concatenate(ys)
    return jnp.sum(y * cotangent), (y, stats)

  (got_grads, (got_y, got_stats)), (want_grads, (want_y, want_stats)) = [
      jax.grad(fn, argnums=(0, 1), has_aux=True)(params, x) for fn in (one_call, one_per_slice)]
  np.testing.assert_allclose(got_y, want_y, rtol=1e-5, atol=1e-5)
  for got, want in zip(jax.tree.leaves((got_grads, got_stats)), jax.tree.leaves((want_grads, want_stats)),
                       strict=True):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  assert float(jnp.max(jnp.abs(got_y - single.apply(
      {"params": params, **variables}, x, use_running_average=False, mutable=["batch_stats"])[0]))) > 1e-2


def test_grouped_batch_norm_names_a_batch_its_groups_do_not_divide():
  module = layers.BatchNorm(groups=3)
  with pytest.raises(ValueError, match=r"groups=3 must divide the batch axis; got shape \(4, 2\)"):
    module.init(jax.random.PRNGKey(0), jnp.ones((4, 2)), use_running_average=False)
