"""falco-correlator: windowed correlation of Falco alerts into incidents."""

from streams.errors import ConfigError, CorrelatorError, NotifyError, RuleError

__all__ = ["ConfigError", "CorrelatorError", "NotifyError", "RuleError", "__version__"]

__version__ = "0.1.0"
