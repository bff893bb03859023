"""Losses as pure functions over arrays."""

from fedjax_med.losses.supervised import cross_entropy, soft_dice_loss, weighted_mean

__all__ = ["cross_entropy", "soft_dice_loss", "weighted_mean"]
