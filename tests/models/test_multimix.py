"""MultiMix's network, saliency bridge and semi-supervised losses."""

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_med import models
from fedjax_med.losses import multitask
from fedjax_med.models.multimix import MultiMixNet, saliency


def _tiny(use_saliency=True):
  model = models.get_model("multimix", 3, num_mask_classes=2, widths=(4, 8), dropout=0.25, use_saliency=use_saliency)
  return model, models.init_variables(model, jax.random.PRNGKey(0), (8, 8, 1))


def test_saliency_equals_a_finite_difference_gradient():
  model, variables = _tiny()
  images = jnp.asarray(np.random.default_rng(0).normal(size=(2, 8, 8, 1)), jnp.float32)
  sal = saliency(model, variables, images)
  assert sal.shape == (2, 8, 8, 1)
  classify = jax.jit(lambda x: model.apply(variables, x, train=False, method=MultiMixNet.classify))  # one compile
  logits = classify(images)
  top = jnp.argmax(logits, axis=-1)
  eps = 1e-2
  for b, (i, j) in [(0, (1, 2)), (1, (5, 6)), (1, (0, 0))]:
    def score(x, b=b):
      return classify(x)[b, top[b]]
    bump = jnp.zeros_like(images).at[b, i, j, 0].set(eps)
    fd = (score(images + bump) - score(images - bump)) / (2 * eps)
    np.testing.assert_allclose(sal[b, i, j, 0], abs(float(fd)), rtol=2e-2, atol=1e-4)
  # another sample's pixels do not move this sample's score: the saliency is per sample
  bump = jnp.zeros_like(images).at[1].set(1.0)
  np.testing.assert_allclose(classify(images + bump)[0], logits[0], rtol=1e-6)


def test_the_bridge_feeds_the_decoder_only_with_saliency_on():
  images = jnp.asarray(np.random.default_rng(1).normal(size=(2, 8, 8, 1)), jnp.float32)
  for use, changes in ((True, True), (False, False)):
    model, variables = _tiny(use)
    apply = jax.jit(lambda s, model=model, variables=variables: model.apply(variables, images, train=False, saliency=s))
    a, b = apply(jnp.zeros((2, 8, 8, 1))), apply(jnp.ones((2, 8, 8, 1)))
    assert a["seg_logits"].shape == (2, 8, 8, 2) and a["logits"].shape == (2, 3)
    assert bool(jnp.any(a["seg_logits"] != b["seg_logits"])) == changes
    np.testing.assert_array_equal(a["logits"], b["logits"])  # the classifier never sees the bridge


def test_pseudo_label_mask_keeps_shapes_and_drops_unconfident_samples():
  weak = jnp.array([[4.0, 0.0, 0.0], [0.1, 0.0, 0.0], [0.0, 0.0, 3.0]])  # confident, unsure, confident
  strong = jnp.array([[0.0, 2.0, 0.0], [5.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
  labels, mask = multitask.pseudo_labels(weak, 0.7)
  np.testing.assert_array_equal(labels, [0, 0, 2])
  np.testing.assert_array_equal(mask, [1.0, 0.0, 1.0])
  loss, kept = multitask.fixmatch_loss(weak, strong, 0.7)
  ce = lambda logits, y: float(jax.nn.logsumexp(logits) - logits[y])
  np.testing.assert_allclose(loss, (ce(strong[0], 0) + ce(strong[2], 2)) / 3, rtol=1e-6)  # mean over all 3
  np.testing.assert_allclose(kept, 2 / 3)
  grads = jax.grad(lambda s: multitask.fixmatch_loss(weak, s, 0.7)[0])(strong)
  np.testing.assert_array_equal(grads[1], 0.0)  # the unconfident sample gives no gradient
  np.testing.assert_array_equal(jax.grad(lambda w: multitask.fixmatch_loss(w, strong, 0.7)[0])(weak), 0.0)


def test_unlabeled_segmentation_term_has_a_gradient_and_is_zero_at_agreement():
  rng = np.random.default_rng(2)
  a = jnp.asarray(rng.normal(size=(2, 4, 4, 2)), jnp.float32)
  b = jnp.asarray(rng.normal(size=(2, 4, 4, 2)), jnp.float32)
  np.testing.assert_allclose(multitask.segmentation_consistency(a, a), 0.0, atol=1e-7)
  value = multitask.segmentation_consistency(a, b)
  p, q = jax.nn.softmax(a), jax.nn.softmax(b)
  np.testing.assert_allclose(value, jnp.mean(jnp.sum(p * jnp.log(p / q), -1)), rtol=1e-5)
  grad = jax.grad(lambda x: multitask.segmentation_consistency(a, x))(b)
  assert float(jnp.abs(grad).sum()) > 0
  # the official term: softmax over one channel, identically zero with zero gradient
  one = lambda x: jnp.mean(jax.nn.softmax(x[..., :1], -1) * (jax.nn.log_softmax(x[..., :1], -1) -
                                                            jax.nn.log_softmax(a[..., :1], -1)))
  assert float(one(b)) == 0.0 and float(jnp.abs(jax.grad(one)(b)).sum()) == 0.0


def test_distribution_alignment_by_hand():
  # ReMixMatch (Berthelot et al., ICLR 2020): p * prior / running mean, renormalised, then argmax and threshold
  prior, mean = jnp.array([0.5, 0.5]), jnp.array([0.8, 0.2])  # the model gives class 0 80 % of unlabeled mass
  probs = jnp.array([[0.9, 0.1], [0.6, 0.4]])
  # sample 0: [0.9 x 0.625, 0.1 x 2.5] = [0.5625, 0.25] -> [9/13, 4/13]; sample 1: [0.375, 1.0] -> [3/11, 8/11]
  np.testing.assert_allclose(multitask.align_distribution(probs, prior, mean), [[9 / 13, 4 / 13], [3 / 11, 8 / 11]],
                             rtol=1e-6)
  np.testing.assert_allclose(multitask.align_distribution(probs, mean, mean), probs, rtol=1e-6)  # prior = mean: as is
  weak = jnp.log(probs)  # softmax(log p) = p
  np.testing.assert_array_equal(multitask.pseudo_labels(weak, 0.7)[1], [1.0, 0.0])  # plain: only sample 0 (0.9)
  labels, mask = multitask.pseudo_labels(weak, 0.7, prior, mean)
  np.testing.assert_array_equal(labels, [0, 1])
  np.testing.assert_array_equal(mask, [0.0, 1.0])  # aligned: 9/13 = 0.69 < 0.7 dropped, 8/11 = 0.73 kept as class 1
  strong = jnp.array([[1.0, 0.0], [2.0, -1.0]])
  loss, kept = multitask.fixmatch_loss(weak, strong, 0.7, prior, mean)
  np.testing.assert_allclose(loss, (jax.nn.logsumexp(strong[1]) - strong[1, 1]) / 2, rtol=1e-6)  # mean over both
  np.testing.assert_allclose(kept, 0.5)
  # running mean, momentum 0.5: 0.5 x [0.8, 0.2] + 0.5 x mean([0.9, 0.1], [0.6, 0.4]) = [0.775, 0.225]
  np.testing.assert_allclose(multitask.update_unlabeled_mean(mean, weak, 0.5), [0.775, 0.225], rtol=1e-6)
