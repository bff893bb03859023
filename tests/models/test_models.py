"""Models: DenseNet-121's known parameter count, output contract, norms, registry errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_med import models


def _shapes(model, shape):
  return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros(shape), train=False))


@pytest.mark.parametrize("num_classes,expected", [(1000, 7_978_856), (7, 6_961_031)])
def test_densenet121_has_torchvisions_parameter_count(num_classes, expected):
  variables = _shapes(models.get_model("densenet121", num_classes), (1, 64, 64, 3))
  assert models.count_params(variables["params"]) == expected


def test_classifier_contract_and_head_alone_equals_full_forward():
  model = models.get_model("densenet", 3, growth_rate=4, block_config=(1, 1), num_init_features=4, stem="small",
                           dropout=0.5)
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 8, 8, 1))
  variables = models.init_variables(model, jax.random.PRNGKey(0), (8, 8, 1))
  out = model.apply(variables, x, train=False)
  assert out["logits"].shape == (2, 3) and out["features"].ndim == 2
  head = model.apply(variables, out["features"], train=False, method="classify")
  np.testing.assert_allclose(head, out["logits"], rtol=1e-6)
  _, updates = model.apply(variables, x, train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.PRNGKey(2)})
  changed = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), variables["batch_stats"], updates["batch_stats"])
  assert max(jax.tree.leaves(changed)) > 0  # train mode updates the running statistics


@pytest.mark.parametrize("norm", ["batch", "instance", "group", "none"])
def test_unet_shapes_for_each_norm(norm):
  model = models.get_model("unet", 4, widths=(4, 8, 8), norm=norm, group_norm_groups=2, upsample="bilinear")
  x = jnp.ones((2, 16, 16, 1))
  out = jax.eval_shape(lambda: model.apply(model.init(jax.random.PRNGKey(0), x, train=False), x, train=False))
  assert out["logits"].shape == (2, 16, 16, 4) and out["features"].shape == (2, 4, 4, 8)


def test_small_cnn_shapes():
  model = models.get_model("small_cnn", 5, widths=(4, 8), dense=6)
  out = model.apply(models.init_variables(model, jax.random.PRNGKey(0), (12, 12, 3)), jnp.ones((3, 12, 12, 3)),
                    train=False)
  assert out["logits"].shape == (3, 5) and out["features"].shape == (3, 6)


def test_bad_arguments_name_the_argument():
  model = models.get_model("unet", 2, widths=(4, 8, 8))
  with pytest.raises(ValueError, match="divisible by 4 for 3 levels; got input shape \\(1, 10, 16, 1\\)"):
    model.init(jax.random.PRNGKey(0), jnp.zeros((1, 10, 16, 1)), train=False)
  with pytest.raises(ValueError, match="UNet `norm` must be one of"):
    models.get_model("unet", 2, norm="layer").init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 1)), train=False)
  with pytest.raises(ValueError, match="model 'unet3d' is not known; available: .*Did you mean 'unet'"):
    models.get_model("unet3d", 2)
  with pytest.raises(ValueError, match="model 'small_cnn' does not take \\['depth'\\]"):
    models.get_model("small_cnn", 2, depth=3)
