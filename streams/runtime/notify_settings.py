"""The `delivery:` section of the worker config: settings of the notify stage.

Apart from streams/runtime/notify.py (which imports Kafka clients) so that the configuration
reader can type this section without them.
"""

from __future__ import annotations

from dataclasses import dataclass

from streams._config_fields import Fields

__all__ = ["NotifySettings", "parse_notify_settings"]

_DAY = 86_400.0


@dataclass(frozen=True, slots=True)
class NotifySettings:
    """The `delivery:` section of the worker config (the stage; per-notifier retries are in
    each notifier's own `delivery:`)."""

    max_in_flight: int = 32
    commit_interval: float = 1.0
    shutdown_grace: float = 10.0
    thread_retention: float = 7 * _DAY


def parse_notify_settings(section: object) -> NotifySettings:
    """ConfigError names the key (`delivery.max_in_flight: ...`). Settings already read (the
    worker config holds them typed) are returned as they are."""
    if isinstance(section, NotifySettings):
        return section
    fields = Fields(section, "delivery")
    default = NotifySettings()
    settings = NotifySettings(
        max_in_flight=fields.integer("max_in_flight", default.max_in_flight),
        commit_interval=fields.seconds("commit_interval", default.commit_interval),
        shutdown_grace=fields.seconds("shutdown_grace", default.shutdown_grace),
        thread_retention=fields.seconds("thread_retention", default.thread_retention),
    )
    fields.finish()
    return settings
