"""Training: the driver (``driver``), the context a loop gets on each train worker
(``context``) and the built-in supervised loop (``loop``)."""

from pipeline.train.driver import build_trainer, run_training

__all__ = ["build_trainer", "run_training"]
