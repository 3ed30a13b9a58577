"""sgdlab: training with stochastic gradients, fast, and the bounds it must meet."""

from sgdlab.errors import CheckpointError, ConfigError, DataError, SgdlabError

__version__ = "0.1.0"

__all__ = ["CheckpointError", "ConfigError", "DataError", "SgdlabError", "__version__"]
