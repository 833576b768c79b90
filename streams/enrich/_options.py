"""The enrichers' typed config reads: streams/_config_fields.py."""

from streams._config_fields import Options

__all__ = ["Options"]
