"""The notifiers' typed config reads: streams/_config_fields.py."""

from streams._config_fields import Fields

__all__ = ["Fields"]
