"""Start a real `ferrumc serve` on a loopback port for tests, and stop it with SIGTERM."""

from __future__ import annotations

import ctypes
import json
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

READY = re.compile(r"ferrumc: serving .* on (http://[\d.]+:\d+)/v1")


@dataclass
class RealServer:
    url: str  # http://127.0.0.1:PORT
    process: subprocess.Popen[str]
    log: list[str] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def health(self) -> dict:
        with urllib.request.urlopen(self.url + "/health", timeout=10) as r:
            return json.loads(r.read())

    signalled: bool = False

    def send(self, sig: signal.Signals = signal.SIGTERM) -> None:
        self.signalled = True
        self.process.send_signal(sig)

    def stop(self, timeout: float = 60, sig: signal.Signals = signal.SIGTERM) -> int:
        """Send `sig` (SIGTERM, or SIGINT as Ctrl-C does) unless a test signalled the server
        already, then wait for the exit code (a late signal would kill it as it exits)."""
        if not self.signalled and self.process.poll() is None:
            self.send(sig)
        return self.process.wait(timeout)


def _die_with_parent() -> None:
    """Linux: SIGTERM the server if the test process dies, so a killed run leaves no server behind."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@contextmanager
def running_server(*args: str, startup_s: float = 120, exit_code: int = 0) -> Iterator[RealServer]:
    """`ferrumc serve ARGS --port 0`; yields once it listens; asserts its exit code afterwards."""
    process = subprocess.Popen(
        [sys.executable, "-m", "ferrumc", "serve", *args, "--port", "0"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_die_with_parent if sys.platform == "linux" else None,
    )
    server = RealServer("", process)
    ready = threading.Event()

    def pump() -> None:  # keep the pipe drained, and spot the address it listens on
        assert process.stderr is not None
        for line in process.stderr:
            server.log.append(line)
            if not ready.is_set() and (m := READY.search(line)):
                server.url = m.group(1)
                ready.set()

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + startup_s
    while not ready.wait(0.1):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise AssertionError("ferrumc serve did not start:\n" + "".join(server.log))
    try:
        yield server
    finally:
        code = server.stop()
        assert code == exit_code, f"ferrumc serve exited {code}:\n" + "".join(server.log)
        assert "Traceback" not in "".join(server.log), "".join(server.log)
