"""Loss and segmentation scores.

Scores are computed from per-image counts (intersection, predicted, true pixels) so that they can be gathered
across processes exactly and reduced once: Dice and IoU are means over images (an image where prediction and
label are both empty scores 1), plus the pooled Dice over all pixels of the benchmark.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .config import LossConfig


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    p = torch.sigmoid(logits.float()).flatten(1)
    t = target.float().flatten(1)
    inter = (p * t).sum(1)
    return 1 - ((2 * inter + eps) / (p.sum(1) + t.sum(1) + eps)).mean()


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, cfg: LossConfig) -> torch.Tensor:
    """BCE + soft Dice on the particle channel; for instance models (2 channels, the target's second one the
    distance to the particle's edge in [0, 1]) plus the distance channel's BCE against that soft target."""
    if logits.shape[1] > 1:
        dist = F.binary_cross_entropy_with_logits(logits[:, 1:2].float(), target[:, 1:2].float())
        return segmentation_loss(logits[:, :1], target[:, :1], cfg) + cfg.distance_weight * dist
    loss = logits.new_zeros((), dtype=torch.float32)
    if cfg.bce_weight:
        loss = loss + cfg.bce_weight * F.binary_cross_entropy_with_logits(logits.float(), target.float())
    if cfg.dice_weight:
        loss = loss + cfg.dice_weight * soft_dice_loss(logits, target)
    return loss


def counts(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B, 3) float64: intersection, predicted and true particle pixels per image (prediction: logit > 0).
    Channel 0 of each: the particle channel (an instance model's distance channel is scored as particles)."""
    pred = (logits[:, :1] > 0).flatten(1)
    t = target[:, :1].flatten(1) > 0.5
    return torch.stack([(pred & t).sum(1), pred.sum(1), t.sum(1)], dim=1).double()


def scores(c: np.ndarray | torch.Tensor) -> dict:
    c = np.asarray(c.cpu() if isinstance(c, torch.Tensor) else c, dtype=np.float64).reshape(-1, 3)
    inter, pred, true = c.T
    both = pred + true
    union = both - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        dice = np.where(both > 0, 2 * inter / both, 1.0)
        iou = np.where(union > 0, inter / union, 1.0)
    pooled = 2 * inter.sum() / both.sum() if both.sum() else 1.0
    return {"n_images": int(len(c)), "dice": float(dice.mean()), "iou": float(iou.mean()),
            "dice_pooled": float(pooled)}
