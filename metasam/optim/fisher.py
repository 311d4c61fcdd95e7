"""SSAM-F's Fisher mask: which coordinates the sparse ascent perturbs."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn


def fisher_scores(params: Sequence[Tensor], model: nn.Module,
                  loss_fn: Callable[[Tensor, Tensor], Tensor], inputs: Tensor,
                  targets: Tensor) -> list[Tensor]:
    """Σ over the examples of the squared per-example gradient, one tensor per parameter
    (the empirical Fisher diagonal, up to a constant), one example per backward pass as in the
    official SSAM-F.

    The model runs in evaluation mode here (and gets its mode back afterwards): a batch of one
    example is degenerate for training-mode BatchNorm (BatchNorm1d refuses it, BatchNorm2d
    normalizes the image by its own statistics), and no running statistics are touched.
    """
    scores = [torch.zeros_like(p, dtype=torch.float32) for p in params]
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            for i in range(inputs.shape[0]):
                loss = loss_fn(model(inputs[i:i + 1]), targets[i:i + 1])
                grads = torch.autograd.grad(loss, list(params), allow_unused=True)
                for score, grad in zip(scores, grads, strict=True):
                    if grad is not None:
                        score.add_(grad.detach().float().square())
    finally:
        model.train(was_training)
    return scores


def top_fraction_mask(scores: Sequence[Tensor], sparsity: float) -> list[Tensor]:
    """Boolean masks keeping the ⌊(1 − sparsity)·d⌋ largest scores over all tensors jointly."""
    flat = torch.cat([s.reshape(-1).to(scores[0].device) for s in scores])
    keep = int(flat.numel() * (1.0 - sparsity))
    mask = torch.zeros_like(flat, dtype=torch.bool)
    if keep > 0:
        mask[torch.topk(flat, keep, sorted=False).indices] = True
    out, start = [], 0
    for s in scores:
        out.append(mask[start:start + s.numel()].reshape(s.shape).to(s.device))
        start += s.numel()
    return out


def refresh_masks(params: list[Tensor], state: Any,
                  sum_: Callable[[list[Tensor]], list[Tensor]],
                  model: nn.Module, loss_fn: Callable[[Tensor, Tensor], Tensor], inputs: Tensor,
                  targets: Tensor, sparsity: float) -> float:
    """SSAM-F's masks of ``params`` into ``state[p]["fisher_mask"]``, from per-example squared
    gradients on ``inputs`` summed by ``sum_`` (over the process group); returns the fraction
    of coordinates kept (one host read for the whole mask)."""
    masks = top_fraction_mask(sum_(fisher_scores(params, model, loss_fn, inputs, targets)),
                              sparsity)
    for p, mask in zip(params, masks, strict=True):
        state[p]["fisher_mask"] = mask
    if not masks:
        return 0.0
    kept = int(torch.stack([m.sum() for m in masks]).sum())
    return kept / max(1, sum(m.numel() for m in masks))
