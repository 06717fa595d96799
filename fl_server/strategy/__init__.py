"""Server strategies: GSFS and the validated Flower baselines it is compared with."""

from fl_server.strategy.baselines import ValidatedFedAdam, ValidatedFedAvg, ValidatedFedProx
from fl_server.strategy.gsfs import GSFS, GSFSConfig

__all__ = ["GSFS", "GSFSConfig", "ValidatedFedAdam", "ValidatedFedAvg", "ValidatedFedProx"]
