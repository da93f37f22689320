"""Run by tests/test_train.py under torchrun (2 CPU processes, gloo): a tiny DDP training run."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from test_train import CFG, Regression, make_model, mse  # noqa: E402

from idclab.train import Trainer  # noqa: E402

out = Path(sys.argv[1])
trainer = Trainer(make_model(), mse, Regression(), config=CFG, out_dir=out / "run")
result = trainer.fit()
torch.save({"model": trainer.model.state_dict(), "history": result.history}, out / f"rank{trainer.rank}.pt")
