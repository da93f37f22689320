"""Contrastive losses shared by the three papers.

* :func:`symmetric_info_nce` -- CLIP's loss and CLIP4IDC's adaptation loss. With v the image-pair (or image)
  embedding and g the text embedding, both L2-normalised, and logits S_ij = scale * <v_i, g_j>:

      L_IP->T = -1/B sum_i log softmax_j(S_ij)[i]      (each pair picks its caption among the batch's captions)
      L_T->IP = -1/B sum_i log softmax_j(S_ji)[i]      (each caption picks its pair among the batch's pairs)
      L = (L_IP->T + L_T->IP) / 2

  CLIP4IDC keeps ``scale = 100`` (tau = 0.01); Pic2Word uses the same form between an image embedding and the
  embedding of "a photo of *" with a fixed scale of 100.

  With several processes (DDP), every rank gathers the features of all ranks and computes the loss of the *global*
  batch (the full [N, N] similarity matrix, N = R ranks x B local rows), as the reference code does. The gather
  passes gradients back (:func:`gather_with_grad`): each rank's features receive the sum, over ranks, of the
  gradient of every rank's copy of the loss, i.e. R times the global loss's gradient; DDP then averages parameter
  gradients over the R ranks, so training sees exactly the gradient of one process on the whole global batch.
  (The reference lets only the local slice carry gradient, so after DDP's averaging its feature gradients are 1/R of
  that; a learnable scale gets the full gradient in both. Under Adam the factor is nearly invisible.)
* :func:`batch_classification_loss` -- the Combiner's (CLIP4Cir) loss, one direction only: each composed query
  classifies its target among the batch's targets, scale 100.

Both losses compute the similarities and the cross-entropy in float32 with autocast switched off: at scale 100,
neighbouring bf16 values near 100 are 0.5 apart, far too coarse for logits.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F

__all__ = ["InfoNCE", "symmetric_info_nce", "batch_classification_loss", "gather_with_grad"]


class InfoNCE(NamedTuple):
    loss: torch.Tensor  # scalar: (ip_t + t_ip) / 2
    ip_t: torch.Tensor  # scalar: image(-pair) -> text direction
    t_ip: torch.Tensor  # scalar: text -> image(-pair) direction
    logits: torch.Tensor  # [N, N] (N = global batch): scale * cos(v_i, g_j), rows = images(-pairs), columns = texts


def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """bf16 / fp16 -> float32; float32 and float64 unchanged."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


class _GatherWithGrad(torch.autograd.Function):
    """All-gather whose backward sums the incoming gradients over ranks and returns this rank's slice."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # [B, D] -> [R*B, D]
        ctx.rank, ctx.rows = dist.get_rank(), x.shape[0]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # [R*B, D] -> [B, D]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)  # every rank's loss depends on this rank's rows
        return grad[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """[B, D] on each of R ranks -> [R*B, D] on every rank, rank r's rows at r*B. Identity without DDP.

    The backward pass is collective (every rank must call it): this rank's rows receive the sum over ranks of the
    gradients that reach them, so that DDP's averaging yields the single-process gradient of a loss that every rank
    computes on the whole gathered batch. Every rank must hold the same B.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    return _GatherWithGrad.apply(x)


def symmetric_info_nce(
    image: torch.Tensor, text: torch.Tensor, *, scale: float | torch.Tensor = 100.0, gather: bool = True
) -> InfoNCE:
    """Symmetric InfoNCE between matching rows of ``image`` [B, D] and ``text`` [B, D] (normalised here).

    ``scale`` is the inverse temperature (CLIP's ``logit_scale.exp()``). With ``gather`` and DDP, every rank gathers
    the global batch [N = R*B, D] and returns the loss of the whole global batch (the same value on every rank), with
    ``logits`` [N, N]; after DDP averages the gradients they equal one process's gradient on that batch. Computed in
    float32 (or the inputs' wider dtype) outside autocast.
    """
    if image.shape != text.shape or image.ndim != 2:
        raise ValueError(f"image and text features must both be [B, D]; got {tuple(image.shape)} and {tuple(text.shape)}.")
    if gather:
        image, text = gather_with_grad(image), gather_with_grad(text)  # [N, D], N = R*B
    with torch.autocast(image.device.type, enabled=False):
        v = F.normalize(_at_least_fp32(image), dim=-1)  # [N, D]
        g = F.normalize(_at_least_fp32(text), dim=-1)  # [N, D]
        scale = _at_least_fp32(scale) if isinstance(scale, torch.Tensor) else scale
        logits = scale * v @ g.T  # [N, N]: rows = images(-pairs), columns = texts
        labels = torch.arange(v.shape[0], device=v.device)  # [N]: the match of row i is column i
        ip_t = F.cross_entropy(logits, labels)
        t_ip = F.cross_entropy(logits.T, labels)
    return InfoNCE((ip_t + t_ip) / 2, ip_t, t_ip, logits)


def batch_classification_loss(query: torch.Tensor, target: torch.Tensor, *, scale: float = 100.0) -> torch.Tensor:
    """The Combiner's loss: cross-entropy of scale * <q_i, t_j> over targets j, label i; inputs normalised here.

    Each process classifies among its own batch's targets (no gather; the reference trains on one GPU). Computed in
    float32 (or the inputs' wider dtype) outside autocast.

    Duplicate targets inside a batch are not masked (as in the reference), so they act as false negatives.
    """
    if query.shape != target.shape or query.ndim != 2:
        raise ValueError(f"query and target must both be [B, D]; got {tuple(query.shape)} and {tuple(target.shape)}.")
    with torch.autocast(query.device.type, enabled=False):  # float32 logits, see the module docstring
        q = F.normalize(_at_least_fp32(query), dim=-1)  # [B, D]
        t = F.normalize(_at_least_fp32(target), dim=-1)  # [B, D]
        logits = scale * q @ t.T  # [B, B]
        return F.cross_entropy(logits, torch.arange(query.shape[0], device=query.device))
