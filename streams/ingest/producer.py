"""Producer SDK: send feedback events to the events topic, one user's events in order."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

from kafka import KafkaProducer
from kafka.errors import KafkaError

from schemas import Click, Impression, Purchase, Rating, event_to_json

log = logging.getLogger(__name__)

Event = Impression | Click | Purchase | Rating


@dataclass
class SendReport:
    sent: int = 0
    failed: int = 0


class EventProducer:
    """kafka-python producer with acks=all, retries and idempotence; key = user id.

    Keying by user id keeps each user's events in one partition, hence in order.
    """

    def __init__(self, bootstrap: str, topic: str, *, linger_ms: int = 5) -> None:
        self.topic = topic
        self._producer = KafkaProducer(
            bootstrap_servers=bootstrap,
            client_id="pagellm-producer",
            acks="all",
            enable_idempotence=True,
            retries=2**31 - 1,
            max_in_flight_requests_per_connection=5,
            linger_ms=linger_ms,
            batch_size=256 * 1024,
            compression_type=None,
        )
        self.report = SendReport()

    def send(self, event: Event) -> None:
        """Queue one validated event."""
        self.send_raw(event.user_id.encode(), event_to_json(event))

    def send_raw(self, key: bytes | None, value: bytes | None) -> None:
        """Queue bytes as they are (the ingest worker validates them; tests send bad ones); a
        None value is Kafka's tombstone."""
        future = self._producer.send(self.topic, key=key, value=value)
        future.add_callback(self._on_sent).add_errback(self._on_failed)

    def send_all(self, events: Iterable[Event]) -> None:
        for event in events:
            self.send(event)

    def _on_sent(self, _metadata: object) -> None:
        self.report.sent += 1

    def _on_failed(self, exc: BaseException) -> None:
        self.report.failed += 1
        log.error("event not delivered to %s: %s", self.topic, exc)

    def flush(self, timeout_s: float | None = None) -> SendReport:
        """Block until everything queued is acknowledged by all in-sync replicas (or failed)."""
        try:
            self._producer.flush(timeout=timeout_s)
        except KafkaError as exc:
            log.error("flush failed: %s", exc)
        return self.report

    def close(self) -> SendReport:
        self.flush()
        self._producer.close()
        return self.report

    def __enter__(self) -> EventProducer:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
