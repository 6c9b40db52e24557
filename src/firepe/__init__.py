"""firepe: FIRE (Functional Interpolation for Relative Positional Encoding) and its baselines."""

__version__ = "0.1.0"

# Every GPTConfig checks its encoding's options and backend through the checks firepe.kinds registers with
# firepe.config (a leaf that cannot import the encodings itself): importing firepe registers them.
from . import arch as _arch  # noqa: E402,F401  (registers the architecture check of every GPTConfig)
from . import kinds as _kinds  # noqa: E402,F401
from .kinds import attend  # noqa: E402  (firepe.attend: any encoding in a model of your own)

__all__ = ["attend", "__version__"]
