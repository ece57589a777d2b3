"""Run by torchrun in a test: rank 1 alone sees a NaN loss; every rank must skip that update together.

Writes one JSON line per rank to the file given as argv[1]: skipped count and a checksum of the weights after each
update, so the test can compare ranks and the weights before and after the skipped update.
"""

import json
import os
import sys

import torch
from torch.nn.parallel import DistributedDataParallel

from engine.train import LoopConfig, TrainState, _finish_update
from utils import dist

device = dist.setup("cpu")
torch.manual_seed(0)
model = DistributedDataParallel(torch.nn.Linear(4, 2))
optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
scaler = torch.amp.GradScaler("cpu", enabled=False)
state = TrainState()
config = LoopConfig(accum_iter=1, clip_grad=1.0, log_interval=1, max_bad_fraction=0.1, max_consecutive_skips=3)
params = list(model.parameters())
sums = []
for update in range(3):
    loss = model(torch.ones(2, 4)).sum()
    if update == 1 and dist.rank() == 1:
        loss = loss * float("nan")
    loss.backward()
    _finish_update(optimizer, scaler, params, config, ~torch.isfinite(loss.detach()), state, device, model)
    sums.append(float(sum(p.detach().double().sum() for p in params)))
with open(f"{sys.argv[1]}.{dist.rank()}", "w") as out:
    json.dump({"rank": dist.rank(), "skipped": state.skipped_updates, "sums": sums}, out)
# What this script checks is written. Gloo's worker threads at interpreter exit can abort a rank under load (SIGABRT,
# "terminate called without an active exception"; a PyTorch teardown race, not the skip logic tested here), so both
# ranks meet and leave without the teardown.
sys.stdout.flush()
dist.barrier()
os._exit(0)
