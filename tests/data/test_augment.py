"""On-device augmentation: identity warps, value ranges, per-example randomness, photometric ops by hand."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_med.data import augment
from fedjax_med.data.pipeline import image_batch_fn


def _images(batch=4, size=12, channels=3, seed=0):
  return jax.random.uniform(jax.random.PRNGKey(seed), (batch, size, size, channels))


def test_identity_warp_returns_the_image_and_a_flip_matrix_flips():
  x = _images()
  eye = jnp.tile(jnp.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]), (4, 1, 1))
  np.testing.assert_allclose(augment.warp(x, eye), x, atol=1e-5)
  hflip = jnp.tile(jnp.array([[1.0, 0.0, 0.0], [0.0, -1.0, 0.0]]), (4, 1, 1))
  np.testing.assert_allclose(augment.warp(x, hflip), x[:, :, ::-1], atol=1e-5)


def test_views_stay_in_range_and_differ_per_example_and_key():
  x = _images(batch=8)
  for view in augment.VIEWS:
    fn = jax.jit(augment.view_fn(view))
    a, b = fn(jax.random.PRNGKey(1), x), fn(jax.random.PRNGKey(2), x)
    assert a.shape == x.shape and float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    assert float(jnp.max(jnp.abs(a - b))) > 0.01  # another key, another augmentation
    np.testing.assert_array_equal(a, fn(jax.random.PRNGKey(1), x))  # same key, same output
  with pytest.raises(ValueError, match="unknown augmentation view 'medium'"):
    augment.view_fn("medium")


def test_equalize_flattens_the_histogram_and_autocontrast_stretches():
  x = _images(batch=1, size=32, channels=1) ** 2  # skewed to dark values
  eq = np.asarray(augment._equalize(x)).ravel()
  hist = np.histogram(eq, bins=4, range=(0, 1))[0] / eq.size
  assert np.all(np.abs(hist - 0.25) < 0.06)
  y = 0.2 + 0.3 * _images(batch=2, channels=1)
  stretched = augment._autocontrast(y)
  np.testing.assert_allclose(stretched.min(axis=(1, 2, 3)), 0.0, atol=1e-6)
  np.testing.assert_allclose(stretched.max(axis=(1, 2, 3)), 1.0, atol=1e-6)


def test_photometric_ops_by_hand():
  x = jnp.full((3, 4, 4, 1), 0.6)
  magnitude = jnp.array([1.0, 0.0, 0.5])
  pool = augment.photometric_pool(x, magnitude, sign=jnp.array([1.0, 1.0, -1.0]))
  solarized = pool[7]
  np.testing.assert_allclose(solarized[0], 0.4)  # threshold 1 - 1 = 0 <= 0.6: inverted
  np.testing.assert_allclose(solarized[1], 0.6)  # threshold 1: untouched
  brightness = pool[1]
  np.testing.assert_allclose(brightness[0], 1.0)  # factor 1.9 clipped
  np.testing.assert_allclose(brightness[1], 0.6)  # factor 1: identity
  np.testing.assert_allclose(brightness[2], 0.6 * 0.55, rtol=1e-6)  # sign -1: factor 1 - 0.9 * 0.5 darkens
  np.testing.assert_allclose(pool[-1], x)


def test_enhance_direction_is_drawn_per_sample_not_by_batch_position():
  # Grey 0.5 images: among the pool only brightness moves a flat image off 0.5 by more than posterize's 0.034
  # (equalize sends it to 0), so a row's min in (0.01, 0.49) means "darkened" and its max above 0.54
  # "brightened". The old pool brightened even rows and darkened odd ones, always (0 and 67 darkened, 76 and 0
  # brightened here). The strong view draws its photometric ops with the same function.
  grey = jnp.full((2, 8, 8, 1), 0.5)
  draw = jax.jit(jax.vmap(lambda k: augment.photometric_view(k, grey, num_ops=1)))
  out = draw(jax.random.split(jax.random.PRNGKey(0), 720))
  low, high = out.min(axis=(2, 3, 4)), out.max(axis=(2, 3, 4))  # [draws, position]
  darkened = np.asarray((low > 0.01) & (low < 0.49)).sum(0)
  brightened = np.asarray(high > 0.54).sum(0)
  # brightness is 1 op of 9 and each direction half of it: ~40 of 720 draws per position and direction
  assert darkened.min() >= 20 and brightened.min() >= 20, (darkened, brightened)


def test_batch_fn_with_views_returns_independent_normalised_views():
  arrays = {"images": jnp.asarray(np.random.default_rng(0).integers(0, 256, (6, 10, 10, 3)), jnp.uint8),
            "labels": jnp.arange(6, dtype=jnp.int32)}
  batch = jax.jit(image_batch_fn((0.5,) * 3, (0.25,) * 3, flips=True, views=("weak", "strong")))(
      arrays, jnp.array([0, 2, 4]), jax.random.PRNGKey(0))  # as the engine runs it: one compile, not op by op
  assert batch["images"].shape == batch["images_2"].shape == (3, 10, 10, 3)
  np.testing.assert_array_equal(batch["labels"], [0, 2, 4])
  assert float(jnp.max(jnp.abs(batch["images"] - batch["images_2"]))) > 0.1
  assert -2.0 - 1e-5 <= float(batch["images"].min()) and float(batch["images"].max()) <= 2.0 + 1e-5


def test_weak_view_with_labels_is_deterministic_and_keeps_masks_aligned():
  rng = np.random.default_rng(5)
  labels = np.zeros((3, 16, 16), np.int32)
  for b in range(3):
    r, c = rng.integers(3, 9, 2)
    labels[b, r:r + 5, c:c + 4] = 1 + b % 2
  images = (labels[..., None] > 0).astype(np.float32)  # the image is the mask: alignment is visible
  key = jax.random.PRNGKey(3)
  img_a, lab_a = augment.weak_view_with_labels(key, jnp.asarray(images), jnp.asarray(labels))
  img_b, lab_b = augment.weak_view_with_labels(key, jnp.asarray(images), jnp.asarray(labels))
  np.testing.assert_array_equal(img_a, img_b)
  np.testing.assert_array_equal(lab_a, lab_b)
  assert lab_a.dtype == jnp.int32 and set(np.unique(lab_a)) <= {0, 1, 2}
  # where the warped image is clearly object / background, the warped label agrees
  inside, outside = np.asarray(img_a[..., 0]) > 0.9, np.asarray(img_a[..., 0]) < 0.1
  assert (np.asarray(lab_a)[inside] > 0).mean() > 0.97 and (np.asarray(lab_a)[outside] == 0).mean() > 0.97
  other, _ = augment.weak_view_with_labels(jax.random.PRNGKey(4), jnp.asarray(images), jnp.asarray(labels))
  assert bool(jnp.any(other != img_a))


def test_photometric_view_moves_no_pixel():
  images = jnp.asarray(np.random.default_rng(6).uniform(size=(4, 8, 8, 1)), jnp.float32)
  key = jax.random.PRNGKey(0)
  out = augment.photometric_view(key, images)
  np.testing.assert_array_equal(out, augment.photometric_view(key, images))
  # no geometry: the view commutes with a flip of the input (same key, same ops and magnitudes)
  np.testing.assert_allclose(augment.photometric_view(key, images[:, :, ::-1]), out[:, :, ::-1], atol=1e-6)
  np.testing.assert_allclose(augment.photometric_view(key, images[:, ::-1]), out[:, ::-1], atol=1e-6)
