"""Commands started as child processes see the caller's files: a relative path in the
settings (``make demo``'s ``var/demo/store``) names the same directory in both."""

from __future__ import annotations

from pathlib import Path

import pytest

from streams.ingest.worker_process import spawn_pagellm
from streams.settings import StreamSettings


def test_a_child_command_resolves_relative_paths_from_the_callers_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    log = tmp_path / "logs" / "init.log"
    proc = spawn_pagellm(StreamSettings(store_dir=Path("rel/store")), ["store", "init"], log)
    assert proc.wait(60) == 0, log.read_text()
    # Before: the child ran in the package's folder and made its own rel/store there.
    assert (tmp_path / "rel" / "store" / "ingested").is_dir(), log.read_text()
