"""Run by torchrun in a test: rank 1 dies (os._exit) at its first update of epoch 1 in the first attempt;
torchrun restarts the
group and ``--resume auto`` must carry the run to its end. argv: marker file, then main_mtl.py's flags."""

import os
import sys

import engine.train as train_module
from engine.entry import main
from utils import dist

marker = sys.argv[1]
original = train_module._finish_update


def dying_update(*args, **kwargs):
    state = args[5]
    if dist.rank() == 1 and state.epoch == 1 and not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(3)
    return original(*args, **kwargs)


train_module._finish_update = dying_update
main("mtl", "", sys.argv[2:])
