"""Topics and local state, prepared before the worker joins its consumer groups.

- `ensure_topics` creates the external topics (events, incidents, dead letters) and every internal
  topic Faust would declare (the correlate topic, the state changelog — compacted — and the
  assignor's leader topic). Faust's assignor ignores topics that are missing when the group is
  first assigned ("Ignoring missing topic") and nothing assigns them later: a worker started on an
  empty cluster would then never correlate.
- `discard_stale_state` protects the RocksDB store from a reset cluster: when the changelog topic
  was recreated (its topic id changed) or a partition's local offset is beyond its changelog's end
  (Faust would raise ConsistencyError at every start: a crash loop), that partition's local store
  is removed with a warning and rebuilt from the changelog. An unreadable store is removed too.
"""

from __future__ import annotations

import logging
import re
import shutil
import time
from pathlib import Path
from typing import Any

import orjson

from streams.runtime.app import TABLE_NAME, changelog_topic_name, faust_data_dir, internal_topics
from streams.runtime.config import StoreKind, WorkerConfig
from streams.runtime.kafka_options import confluent_config

__all__ = ["discard_stale_state", "ensure_topics", "table_dir"]

log = logging.getLogger("streams.worker")

_OFFSET_KEY = b"__faust\x00offset__"
_MARKER = "cluster.json"


def table_dir(config: WorkerConfig) -> Path:
    return faust_data_dir(config) / "v1" / "tables"


def ensure_topics(config: WorkerConfig, timeout_s: float = 30.0) -> None:
    """Create every topic the worker reads or writes that does not exist yet."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

    admin = AdminClient(confluent_config(config.kafka))
    topics = config.topics
    wanted: dict[str, tuple[int, dict[str, str]]] = {
        name: (topics.partitions, {})
        for name in (topics.events, topics.incidents, topics.dead_letter, topics.notify_dead_letter)
    }
    wanted.update(internal_topics(config.app.id, topics.partitions))
    existing = admin.list_topics(timeout=timeout_s).topics
    missing = [
        NewTopic(
            name,
            num_partitions=partitions,
            replication_factor=topics.replication_factor,
            config=settings,
        )
        for name, (partitions, settings) in wanted.items()
        if name not in existing
    ]
    correlate = internal_topics(config.app.id, topics.partitions)
    for name, (partitions, _) in correlate.items():
        found = existing.get(name)
        if found is not None and len(found.partitions) != partitions:
            raise RuntimeError(
                f"topic {name} has {len(found.partitions)} partitions but topics.partitions is "
                f"{partitions}: the state of each key lives on one partition, so the count "
                "cannot change under existing state (use a new app.id to start afresh)"
            )
    if not missing:
        return
    for name, future in admin.create_topics(missing, request_timeout=timeout_s).items():
        try:
            future.result()
            log.info("created topic %s", name)
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise
    # A created topic reaches every broker's metadata a moment later: wait for it, so that the
    # next steps (and the groups' first assignment) see every topic.
    deadline = time.monotonic() + timeout_s
    pending = {topic.topic for topic in missing}
    while pending:
        listed = admin.list_topics(timeout=timeout_s).topics
        pending = {
            name for name in pending if name not in listed or listed[name].error is not None
        }
        if pending and time.monotonic() > deadline:
            raise RuntimeError(f"topics not in the cluster metadata after creation: {pending}")
        if pending:
            time.sleep(0.2)


def discard_stale_state(config: WorkerConfig, timeout_s: float = 30.0) -> list[str]:
    """Remove local table partitions that are ahead of (or foreign to) their changelog.

    Returns a line per partition removed (also logged as warnings)."""
    if config.app.store is not StoreKind.ROCKSDB:
        return []
    tables = table_dir(config)
    stores = _partition_stores(tables)
    changelog = changelog_topic_name(config.app.id)
    from confluent_kafka import KafkaException, TopicCollection, TopicPartition
    from confluent_kafka.admin import AdminClient, OffsetSpec  # type: ignore[attr-defined]

    admin = AdminClient(confluent_config(config.kafka))
    deadline = time.monotonic() + timeout_s
    while True:  # a just-created topic may not be known to the broker answering yet
        description = admin.describe_topics(
            TopicCollection([changelog]), request_timeout=timeout_s
        )
        try:
            topic_id = str(description[changelog].result(timeout=timeout_s).topic_id)
            break
        except KafkaException as exc:
            if "UNKNOWN_TOPIC" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    marker = tables.parent / _MARKER
    removed: list[str] = []
    recorded = _read_marker(marker)
    if stores and recorded is not None and recorded != topic_id:
        for partition, path in sorted(stores.items()):
            removed.append(_remove(path, partition, "the changelog topic was recreated"))
        stores = {}
    if stores:
        latest = OffsetSpec.latest()  # type: ignore[no-untyped-call]
        request = {TopicPartition(changelog, p): latest for p in stores}
        futures = admin.list_offsets(request, request_timeout=timeout_s)
        ends = {tp.partition: f.result(timeout=timeout_s).offset for tp, f in futures.items()}
        for partition, path in sorted(stores.items()):
            try:
                offset = _persisted_offset(path)
            except Exception as exc:  # rocksdict raises its own exception types
                removed.append(_remove(path, partition, f"the local store is unreadable ({exc})"))
                continue
            end = ends.get(partition, 0)
            if offset is not None and offset >= end:
                removed.append(
                    _remove(
                        path,
                        partition,
                        f"its offset {offset} is beyond the changelog's end {end} "
                        "(the cluster was reset?)",
                    )
                )
    tables.parent.mkdir(parents=True, exist_ok=True)
    marker.write_bytes(orjson.dumps({"changelog": changelog, "topic_id": topic_id}))
    return removed


def _partition_stores(tables: Path) -> dict[int, Path]:
    pattern = re.compile(rf"^{re.escape(TABLE_NAME)}-(\d+)\.db$")
    stores: dict[int, Path] = {}
    if tables.is_dir():
        for path in tables.iterdir():
            match = pattern.match(path.name)
            if match:
                stores[int(match.group(1))] = path
    return stores


def _read_marker(marker: Path) -> str | None:
    try:
        data: Any = orjson.loads(marker.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    value = data.get("topic_id") if isinstance(data, dict) else None
    return value if isinstance(value, str) else None


def _persisted_offset(path: Path) -> int | None:
    from rocksdict import AccessType, Options, Rdict

    db = Rdict(str(path), options=Options(raw_mode=True), access_type=AccessType.read_only())
    try:
        value = db.get(_OFFSET_KEY)
    finally:
        db.close()
    return None if value is None else int(value)


def _remove(path: Path, partition: int, why: str) -> str:
    line = f"discarding local state of partition {partition} ({path}): {why}; it is rebuilt "
    line += "from the changelog"
    log.warning("%s", line)
    shutil.rmtree(path, ignore_errors=True)
    return line
