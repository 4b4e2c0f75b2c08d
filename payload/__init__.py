"""grid-payload: train and apply neural networks on ROOT ntuples wherever the compute is."""

__version__ = "0.1.0"
