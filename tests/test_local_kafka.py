"""The local broker's lifecycle: start, start again (harmless), stop cleanly."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from deploy.local_kafka import LocalKafka, accepts_connections, free_port


def test_free_port_is_bindable() -> None:
    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


@pytest.mark.kafka
def test_start_twice_is_harmless_and_stop_is_clean(tmp_path: Path) -> None:
    broker = LocalKafka(tmp_path / "kafka", heap="384m")
    first = broker.start()
    try:
        assert accepts_connections(first.port)
        again = LocalKafka(tmp_path / "kafka").start()
        assert again == first  # same process, same port: nothing new was started
    finally:
        assert broker.stop() is True
    assert broker.state() is None
    assert not accepts_connections(first.port)
    assert not broker.state_path.exists()
    assert broker.stop() is False
