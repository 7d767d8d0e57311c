"""Training: joint multi-width RD training, lambda scheduling, data sampling."""
from .lambdas import PREDEFINED_LAMBDAS, LambdaScheduler, rd_slope
from .trainer import TrainConfig, Trainer, rd_loss, validate

__all__ = ["TrainConfig", "Trainer", "rd_loss", "validate", "LambdaScheduler", "rd_slope",
           "PREDEFINED_LAMBDAS"]
