"""Workers as child processes (the demo, the tests and the benchmarks run them so)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from streams.settings import StreamSettings


def process_alive(pid: int) -> bool:
    """Whether a process with this pid runs (a zombie does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); it is dead for our purposes.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def settings_env(settings: StreamSettings) -> dict[str, str]:
    """The ``PAGELLM_*`` environment that reproduces ``settings`` in another process, paths
    made absolute: a process started elsewhere reads and writes the same files."""
    env = dict(os.environ)
    for name, value in settings.model_dump().items():
        if value is None:  # unset: the other process takes the same default
            env.pop(f"PAGELLM_{name.upper()}", None)
        else:
            env[f"PAGELLM_{name.upper()}"] = str(
                value.absolute() if isinstance(value, Path) else value
            )
    return env


def spawn_worker(
    settings: StreamSettings, writer_id: str, log_path: Path
) -> subprocess.Popen[bytes]:
    """Start ``pagellm worker`` with ``settings``; its output goes to ``log_path``."""
    return spawn_pagellm(settings, ["worker", "--id", writer_id], log_path)


def spawn_pagellm(
    settings: StreamSettings, argv: list[str], log_path: Path
) -> subprocess.Popen[bytes]:
    """Start ``pagellm ARGV...`` with ``settings``; its output goes to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "pagellm", *argv],
            env=settings_env(settings),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )


def stop_worker(proc: subprocess.Popen[bytes], timeout_s: float = 30.0) -> int:
    """SIGTERM (faust commits and leaves the group), then SIGKILL if it hangs."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode
