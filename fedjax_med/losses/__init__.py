"""Losses as pure functions over arrays."""

from fedjax_med.losses.supervised import cross_entropy, soft_dice_loss, weighted_mean
from fedjax_med.losses.weak import gated_crf_loss, partial_ce_crf, partial_cross_entropy

__all__ = ["cross_entropy", "gated_crf_loss", "partial_ce_crf", "partial_cross_entropy", "soft_dice_loss",
           "weighted_mean"]
