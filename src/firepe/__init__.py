"""firepe: FIRE (Functional Interpolation for Relative Positional Encoding) and its baselines."""

__version__ = "0.1.0"
