"""Classification metrics against scikit-learn on random inputs, plus hand-computed cases."""

import numpy as np
import pytest
from sklearn import metrics as skm

from fedjax_med.metrics import binary_auroc, classification_metrics, confusion_matrix


@pytest.mark.parametrize("seed", range(5))
def test_against_sklearn(seed):
  rng = np.random.default_rng(seed)
  n, c = 300, 5
  labels = rng.integers(0, c, n)
  logits = rng.normal(size=(n, c)) + 1.5 * np.eye(c)[labels] * rng.random((n, 1))
  probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
  preds = probs.argmax(1)
  got = classification_metrics(probs, labels, c)
  assert got["accuracy"] == pytest.approx(skm.accuracy_score(labels, preds))
  assert got["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(labels, preds))
  assert got["macro_f1"] == pytest.approx(skm.f1_score(labels, preds, average="macro"))
  assert got["macro_sensitivity"] == pytest.approx(skm.recall_score(labels, preds, average="macro"))
  assert got["macro_auroc"] == pytest.approx(skm.roc_auc_score(labels, probs, multi_class="ovr", average="macro"))
  cm = skm.confusion_matrix(labels, preds, labels=range(c))
  np.testing.assert_array_equal(confusion_matrix(preds, labels, c), cm)
  specificity = [(cm.sum() - cm[k].sum() - cm[:, k].sum() + cm[k, k]) / (cm.sum() - cm[k].sum()) for k in range(c)]
  assert got["macro_specificity"] == pytest.approx(np.mean(specificity))


def test_binary_auroc_with_ties_matches_sklearn():
  rng = np.random.default_rng(7)
  scores = rng.integers(0, 4, 1000) / 4.0  # heavy ties
  targets = rng.random(1000) < 0.3
  assert binary_auroc(scores, targets) == pytest.approx(skm.roc_auc_score(targets, scores))
  assert binary_auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)  # hand: 3 of 4 pairs ordered
  assert np.isnan(binary_auroc([0.1, 0.2], [1, 1]))


def test_absent_class_is_left_out_of_the_macro_means():
  probs = np.array([[0.9, 0.1, 0.0], [0.2, 0.8, 0.0], [0.6, 0.4, 0.0]])
  labels = np.array([0, 1, 1])  # class 2 never occurs and is never predicted
  got = classification_metrics(probs, labels, 3)
  assert got["accuracy"] == pytest.approx(2 / 3)
  assert got["balanced_accuracy"] == pytest.approx((1.0 + 0.5) / 2)
  assert np.isnan(got["auroc_per_class"][2]) and got["macro_auroc"] == pytest.approx(1.0)
  assert got["macro_f1"] == pytest.approx(skm.f1_score(labels, probs.argmax(1), average="macro"))


def test_shape_errors_name_the_shapes():
  with pytest.raises(ValueError, match=r"probs must be \[N, num_classes\] = \(2, 3\); got \(2, 2\)"):
    classification_metrics(np.zeros((2, 2)), np.array([0, 1]), 3)
