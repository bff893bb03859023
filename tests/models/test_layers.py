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
