"""Training: joint multi-width RD training, lambda scheduling, data sampling.

The names below are imported from their submodules on first use (``import
slimkernels.training`` alone does not import torch).
"""
import importlib

#: public name -> the submodule that defines it
_LAZY = {"TrainConfig": "trainer", "Trainer": "trainer", "rd_loss": "trainer",
         "validate": "trainer", "LambdaScheduler": "lambdas", "rd_slope": "lambdas",
         "PREDEFINED_LAMBDAS": "lambdas"}

__all__ = ["TrainConfig", "Trainer", "rd_loss", "validate", "LambdaScheduler", "rd_slope",
           "PREDEFINED_LAMBDAS"]


def __getattr__(name: str):
    """:data:`__all__`'s names, imported from their submodule on first use."""
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
