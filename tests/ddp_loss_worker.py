"""Run by tests/test_losses.py under torchrun (2 CPU processes, gloo): one DDP backward of symmetric_info_nce, each
rank holding its half of the fixed global batch; saves the loss and the (DDP-averaged) gradients of this rank."""

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

sys.path.insert(0, str(Path(__file__).parent))
from test_losses import global_batch, two_towers  # noqa: E402

from idclab.losses import symmetric_info_nce  # noqa: E402

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
x, y = global_batch()  # [N, 6], [N, 5]
rows = x.shape[0] // world
mine = slice(rank * rows, (rank + 1) * rows)  # this rank's half of the global batch
model = DistributedDataParallel(two_towers())
v, g, scale = model(x[mine], y[mine])  # [N/2, 4], [N/2, 4], scalar
out = symmetric_info_nce(v, g, scale=scale)
out.loss.backward()  # DDP averages the gradients over the ranks here
grads = {name: p.grad for name, p in model.module.named_parameters()}
saved = {"loss": out.loss.detach(), "logits": out.logits.detach(), "grads": grads}
torch.save(saved, Path(sys.argv[1]) / f"rank{rank}.pt")
dist.destroy_process_group()
