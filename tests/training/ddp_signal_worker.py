"""Run by test_trainer.py under torchrun (2 CPU processes, gloo): a long run in which SIGTERM
reaches rank 1 alone (as `kill` of one worker does); each rank then writes the step it stopped
at and the signal it reports, for the test to check that both stopped together, saved."""
import json
import os
import signal
import sys

import torch.distributed as dist

from slimkernels.training import TrainConfig, Trainer

data, out = sys.argv[1], sys.argv[2]
dist.init_process_group("gloo")
rank = dist.get_rank()
cfg = TrainConfig(data=data, out=out, widths=[8, 4], lambdas=[0.01, 0.002], batch=2, crop=32,
                  steps=10 ** 6, val_every=0, val_split=5, bf16=False, progress=False,
                  ckpt_every_s=1e9)
t = Trainer(cfg, log=lambda *_: None)
real = t.train_step


def step(x):   # (rank 1 signals itself at its 3rd step)
    if rank == 1 and t.step == 2:
        os.kill(os.getpid(), signal.SIGTERM)
    return real(x)


t.train_step = step
t.fit()
with open(os.path.join(out, f"stopped{rank}.json"), "w") as f:
    json.dump({"step": t.step, "signal": t.stopped_by}, f)
dist.barrier()
dist.destroy_process_group()
