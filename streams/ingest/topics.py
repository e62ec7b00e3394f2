"""Topic administration: the events topic and its dead-letter topic."""

from __future__ import annotations

import logging

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError

from streams.settings import StreamSettings

log = logging.getLogger(__name__)


def create_topic(
    bootstrap: str,
    name: str,
    partitions: int,
    replication: int = 1,
    *,
    compacted: bool = False,
    min_insync_replicas: int | None = None,
) -> bool:
    """Create ``name`` with ``partitions``; False (and no change) if it already exists."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="pagellm-admin")
    configs = {"cleanup.policy": "compact"} if compacted else {}
    if min_insync_replicas is not None:
        configs["min.insync.replicas"] = str(min_insync_replicas)
    try:
        admin.create_topics([NewTopic(name, partitions, replication, topic_configs=configs)])
    except TopicAlreadyExistsError:
        existing = admin.describe_topics([name])[0]["partitions"]
        if len(existing) != partitions:
            log.warning(
                "topic %s exists with %d partitions (asked for %d); left as it is",
                name,
                len(existing),
                partitions,
            )
        return False
    finally:
        admin.close()
    log.info("created topic %s with %d partitions", name, partitions)
    return True


def topic_id(bootstrap: str, name: str) -> str:
    """The broker's id of topic ``name`` (new whenever the topic is created anew)."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="pagellm-admin")
    try:
        (description,) = admin.describe_topics([name])
    finally:
        admin.close()
    if description["error_code"] != 0:
        raise LookupError(
            f"topic {name!r} is not available on {bootstrap} (Kafka error "
            f"{description['error_code']}); create it with `pagellm topics`"
        )
    return str(description["topic_id"])


def ensure_topics(settings: StreamSettings) -> None:
    """Create the events, dead-letter and catalogue topics if they are missing."""
    bootstrap, partitions, replicas = (
        settings.kafka_bootstrap,
        settings.partitions,
        settings.replication_factor,
    )
    insync = settings.min_insync_replicas
    create_topic(bootstrap, settings.events_topic, partitions, replicas, min_insync_replicas=insync)
    create_topic(
        bootstrap, settings.dead_letter_topic, partitions, replicas, min_insync_replicas=insync
    )
    create_topic(
        bootstrap, settings.catalogue_topic, partitions, replicas, compacted=True,
        min_insync_replicas=insync,
    )  # fmt: skip
