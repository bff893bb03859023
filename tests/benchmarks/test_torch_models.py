"""benchmarks.torch_models: each PyTorch mirror has the Flax model's parameter count and, loaded with the Flax
variables, computes the same outputs in eval mode and in train mode (batch statistics)."""

import copy
import functools

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from benchmarks import torch_models  # noqa: E402
from fedjax_med import models  # noqa: E402

TINY_DENSENET = dict(growth_rate=4, block_config=(2, 2), num_init_features=8)
CASES = {  # id: (registry name, num_classes, input HWC, kwargs); small enough for seconds on a busy CPU
    "densenet-imagenet": ("densenet", 3, (16, 16, 3), dict(TINY_DENSENET, stem="imagenet")),
    "densenet-small": ("densenet", 3, (16, 16, 3), dict(TINY_DENSENET, stem="small")),
    "unet-batch": ("unet", 2, (16, 16, 2), dict(widths=(4, 8, 16), norm="batch")),
    "unet-none": ("unet", 2, (16, 16, 2), dict(widths=(4, 8, 16), norm="none")),
    "encoder-projector": ("unet_encoder_projector", 0, (16, 16, 1), dict(widths=(4, 8), projection_dim=8, hidden=6)),
    "small_cnn-none": ("small_cnn", 3, (16, 16, 3), dict(widths=(4, 8), dense=8, norm="none")),
    "small_cnn-batch": ("small_cnn", 3, (16, 16, 3), dict(widths=(4, 8), dense=8, norm="batch")),
}


def mirror(name, num_classes, channels, kwargs):
  if name == "densenet":
    return torch_models.DenseNet(num_classes, in_channels=channels, **kwargs)
  if name == "unet":
    return torch_models.UNet(num_classes, channels, **kwargs)
  if name == "unet_encoder_projector":
    return torch_models.UNetEncoderProjector(channels, **kwargs)
  return torch_models.SmallCNN(num_classes, channels, **kwargs)


def flax_variables(model, shape, seed=0):
  """The model's variables with every entry drawn at random: the tree (names, shapes) comes from
  ``init_variables`` through ``jax.eval_shape``, because compiling flax's random initialisers takes ~20 s per model
  on a busy 2-core CPU; and unit BN scales/variances or zero biases/means would hide swapped or skipped entries."""
  tree = jax.eval_shape(lambda: models.init_variables(model, jax.random.key(0), shape))
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    entry = path[-1].key
    if entry in ("scale", "var"):
      value = rng.uniform(0.5, 1.5, leaf.shape)
    elif entry == "kernel":  # fan-in scaling keeps activations O(1) through the network
      value = rng.standard_normal(leaf.shape) / np.sqrt(np.prod(leaf.shape[:-1]))
    else:
      value = 0.1 * rng.standard_normal(leaf.shape)
    return value.astype(np.float32)

  return jax.tree_util.tree_map_with_path(draw, tree)


def torch_outputs(out):
  """The mirror's outputs as the Flax model's dict, NHWC."""
  if isinstance(out, tuple):
    return {"features": out[0].detach().numpy(), "logits": out[1].detach().numpy()}
  if out.ndim == 4:
    return {"logits": out.detach().numpy().transpose(0, 2, 3, 1)}
  return {"projection": out.detach().numpy()}


@pytest.fixture(scope="module", params=list(CASES))
def case(request):
  name, num_classes, shape, kwargs = CASES[request.param]
  model = models.get_model(name, num_classes, **kwargs)
  variables = flax_variables(model, shape)
  module = mirror(name, num_classes, shape[-1], kwargs)
  x = np.random.default_rng(1).standard_normal((4, *shape)).astype(np.float32)
  return model, variables, module, x


def assert_same(flax_out, module_out):
  ours = torch_outputs(module_out)
  for key, value in ours.items():
    np.testing.assert_allclose(value, np.asarray(flax_out[key]), atol=1e-4, rtol=0, err_msg=key)


def test_parameter_count_matches_flax(case):
  _, variables, module, _ = case
  assert sum(p.numel() for p in module.parameters()) == models.count_params(variables["params"])


def test_eval_outputs_match_flax(case):
  model, variables, module, x = case
  module = copy.deepcopy(module)
  torch_models.load_flax_variables(module, variables)
  expected = jax.jit(functools.partial(model.apply, train=False))(variables, x)
  with torch.no_grad():
    assert_same(expected, module.eval()(torch.from_numpy(x.transpose(0, 3, 1, 2))))


def test_train_outputs_and_running_means_match_flax(case):
  model, variables, module, x = case
  module = copy.deepcopy(module)
  torch_models.load_flax_variables(module, variables)
  apply = jax.jit(functools.partial(model.apply, train=True, mutable=["batch_stats"]))
  expected, updates = apply(variables, x)
  with torch.no_grad():
    assert_same(expected, module.train()(torch.from_numpy(x.transpose(0, 3, 1, 2))))
  # Same decay (bn_momentum 0.9 = torch momentum 0.1). The running variances differ by design: torch folds in the
  # unbiased batch variance, flax the biased one.
  for path, layer in module.flax_layout():
    if isinstance(layer, torch.nn.BatchNorm2d):
      stats = functools.reduce(lambda tree, key: tree[key], path.split("/"), updates["batch_stats"])
      np.testing.assert_allclose(layer.running_mean.numpy(), np.asarray(stats["mean"]), atol=1e-5, err_msg=path)


def test_densenet121_has_the_flax_docstring_parameter_count():
  assert sum(p.numel() for p in torch_models.densenet121(7).parameters()) == 6_961_031


def test_load_rejects_variables_of_another_configuration():
  model = models.get_model("small_cnn", 3, widths=(4, 8), dense=8, norm="batch")
  variables = flax_variables(model, (8, 8, 3))
  with pytest.raises(ValueError, match="convs_1/kernel"):
    torch_models.load_flax_variables(torch_models.SmallCNN(3, 3, widths=(4, 6), dense=8, norm="batch"), variables)
  with pytest.raises(ValueError, match="norms_0"):
    torch_models.load_flax_variables(torch_models.SmallCNN(3, 3, widths=(4, 8), dense=8, norm="none"), variables)


def test_unsupported_unet_norm_is_named():
  with pytest.raises(ValueError, match="'group'"):
    torch_models.UNet(2, 1, widths=(4, 8), norm="group")
