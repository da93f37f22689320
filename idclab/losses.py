"""Contrastive losses shared by the three papers.

* :func:`symmetric_info_nce` -- CLIP's loss and CLIP4IDC's adaptation loss. With v the image-pair (or image)
  embedding and g the text embedding, both L2-normalised, and logits S_ij = scale * <v_i, g_j>:

      L_IP->T = -1/B sum_i log softmax_j(S_ij)[i]      (each pair picks its caption among the batch's captions)
      L_T->IP = -1/B sum_i log softmax_j(S_ji)[i]      (each caption picks its pair among the batch's pairs)
      L = (L_IP->T + L_T->IP) / 2

  CLIP4IDC keeps ``scale = 100`` (tau = 0.01) and gathers negatives across GPUs; Pic2Word uses the same form between
  an image embedding and the embedding of "a photo of *" with a fixed scale of 100.
* :func:`batch_classification_loss` -- the Combiner's (CLIP4Cir) loss, one direction only: each composed query
  classifies its target among the batch's targets, scale 100.
* :func:`gather_with_grad` -- all-gather features from every process (DDP) so each rank sees the global batch as
  negatives; the gradient flows back only into the local slice, as in the reference.
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
    logits: torch.Tensor  # [B, B]: scale * cos(v_i, g_j), rows = images(-pairs), columns = texts


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """[B, D] on each of R ranks -> [R*B, D] on every rank; gradients reach only this rank's rows. Identity if not DDP."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    parts = [torch.zeros_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.detach())
    parts[dist.get_rank()] = x  # the local slice keeps its graph
    return torch.cat(parts, dim=0)


def symmetric_info_nce(
    image: torch.Tensor, text: torch.Tensor, *, scale: float | torch.Tensor = 100.0, gather: bool = True
) -> InfoNCE:
    """Symmetric InfoNCE between matching rows of ``image`` [B, D] and ``text`` [B, D] (normalised here).

    ``scale`` is the inverse temperature (CLIP's ``logit_scale.exp()``). With ``gather`` and DDP, negatives come from
    the global batch, and the positives of this rank sit at offset rank * B.
    """
    if image.shape != text.shape or image.ndim != 2:
        raise ValueError(f"image and text features must both be [B, D]; got {tuple(image.shape)} and {tuple(text.shape)}.")
    v = F.normalize(image, dim=-1)  # [B, D]
    g = F.normalize(text, dim=-1)  # [B, D]
    offset = 0
    if gather:
        all_v, all_g = gather_with_grad(v), gather_with_grad(g)  # [R*B, D]
        if all_v.shape[0] != v.shape[0]:
            offset = dist.get_rank() * v.shape[0]
    else:
        all_v, all_g = v, g
    labels = torch.arange(v.shape[0], device=v.device) + offset  # [B]
    logits_ip_t = scale * v @ all_g.T  # [B, R*B]: my pairs against every caption
    logits_t_ip = scale * g @ all_v.T  # [B, R*B]: my captions against every pair
    ip_t = F.cross_entropy(logits_ip_t, labels)
    t_ip = F.cross_entropy(logits_t_ip, labels)
    return InfoNCE((ip_t + t_ip) / 2, ip_t, t_ip, logits_ip_t)


def batch_classification_loss(query: torch.Tensor, target: torch.Tensor, *, scale: float = 100.0) -> torch.Tensor:
    """The Combiner's loss: cross-entropy of scale * <q_i, t_j> over targets j, label i; inputs normalised here.

    Duplicate targets inside a batch are not masked (as in the reference), so they act as false negatives.
    """
    if query.shape != target.shape or query.ndim != 2:
        raise ValueError(f"query and target must both be [B, D]; got {tuple(query.shape)} and {tuple(target.shape)}.")
    logits = scale * F.normalize(query, dim=-1) @ F.normalize(target, dim=-1).T  # [B, B]
    return F.cross_entropy(logits, torch.arange(query.shape[0], device=query.device))
