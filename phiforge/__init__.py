"""phiforge: the Phi-4 recipe (synthetic data, pretraining, post-training, evaluation) as one small library."""

__version__ = "0.1.0"
