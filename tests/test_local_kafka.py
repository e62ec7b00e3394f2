"""The local broker's lifecycle: start, start again (harmless), stop cleanly."""

from __future__ import annotations

import base64
import socket
from pathlib import Path

import pytest

from deploy.local_kafka import LocalKafka, accepts_connections, free_port, new_cluster_id


def test_free_port_is_bindable() -> None:
    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_cluster_ids_are_kafkas_uuid_text() -> None:
    ids = [new_cluster_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    for text in ids:  # 22 characters of URL-safe base64 for 16 bytes, never a flag
        assert len(text) == 22 and not text.startswith("-")
        assert len(base64.urlsafe_b64decode(text + "==")) == 16


@pytest.mark.kafka
def test_start_twice_is_harmless_and_stop_is_clean(tmp_path: Path) -> None:
    broker = LocalKafka(tmp_path / "kafka", heap="384m")
    first = broker.start()
    try:
        assert accepts_connections(first.port)
        meta = (tmp_path / "kafka" / "data" / "meta.properties").read_text()
        assert len(meta.split("cluster.id=")[1].split()[0]) == 22  # formatted with our id
        again = LocalKafka(tmp_path / "kafka").start()
        assert again == first  # same process, same port: nothing new was started
    finally:
        assert broker.stop() is True
    assert broker.state() is None
    assert not accepts_connections(first.port)
    assert not broker.state_path.exists()
    assert broker.stop() is False
