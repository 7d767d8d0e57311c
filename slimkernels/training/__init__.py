"""Training: joint multi-width RD training, lambda scheduling, data sampling.

The names below are imported from their submodules on first use (``import
slimkernels.training`` alone does not import torch).
"""
from .._lazy import lazy_names

__all__ = ["TrainConfig", "Trainer", "rd_loss", "validate", "LambdaScheduler", "rd_slope",
           "PREDEFINED_LAMBDAS"]

__getattr__, __dir__ = lazy_names(__name__, {
    "TrainConfig": "trainer", "Trainer": "trainer", "rd_loss": "trainer", "validate": "trainer",
    "LambdaScheduler": "lambdas", "rd_slope": "lambdas", "PREDEFINED_LAMBDAS": "lambdas"},
    globals())
