"""Run by test_trainer.py under torchrun (2 CPU processes, gloo): a few DDP steps, then each
rank saves its weights so the test can check that the replicas agree; then each rank resumes
the run and saves its first crops (the ranks' must differ)."""
import os
import sys

import torch
import torch.distributed as dist

from slimkernels.training import TrainConfig, Trainer

data, out = sys.argv[1], sys.argv[2]
dist.init_process_group("gloo")
rank = dist.get_rank()
cfg = TrainConfig(data=data, out=out, widths=[8, 4], lambdas=[0.01, 0.002], batch=2, crop=32,
                  steps=3, val_every=0, val_split=5, bf16=False, progress=False, ckpt_every_s=1e9)
t = Trainer(cfg, log=lambda *_: None)
torch.save(t.ema, os.path.join(out, f"ema{rank}.pt"))   # (the average the run starts from)
if rank == 0:
    torch.save({k: v.clone() for k, v in t.model.state_dict().items()}, os.path.join(out, "init.pt"))
t.fit()
torch.save(t.model.state_dict(), os.path.join(out, f"rank{rank}.pt"))
dist.barrier()
# resumed: each rank must draw crops of its own (rank 0's saved sampler state was every rank's)
r = Trainer(TrainConfig(**{**cfg.__dict__, "steps": 4}), log=lambda *_: None)
r.load_data()
torch.save(r.sampler.sample(2, 32), os.path.join(out, f"resumed_crops{rank}.pt"))
dist.barrier()
dist.destroy_process_group()
