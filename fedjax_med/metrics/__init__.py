"""Evaluation metrics (numpy, host side)."""

from fedjax_med.metrics.classification import binary_auroc, classification_metrics, confusion_matrix
from fedjax_med.metrics.segmentation import dice_iou, hd95, hd95_per_class, reduce_metric, volume_dice

__all__ = ["binary_auroc", "classification_metrics", "confusion_matrix", "dice_iou", "hd95", "hd95_per_class",
           "reduce_metric", "volume_dice"]
