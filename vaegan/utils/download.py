"""Downloads that fail fast when offline instead of hanging (urllib has no timeout by default)."""

from __future__ import annotations

import socket
import threading
from urllib.parse import urlparse

PROBE_TIMEOUT_S = 10.0  # name lookup plus TCP connect
READ_TIMEOUT_S = 60.0  # per socket operation while downloading


def reachable(url: str, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """None if ``url``'s host accepts a TCP connection within ``timeout`` seconds, else the reason.

    The lookup runs in a daemon thread because getaddrinfo ignores socket timeouts and can stall
    for minutes on a machine without a resolver.
    """
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    result: list[str | None] = []

    def probe() -> None:
        try:
            socket.create_connection((parsed.hostname, port), timeout=timeout).close()
            result.append(None)
        except OSError as err:
            result.append(f"{type(err).__name__}: {err}")

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return result[0] if result else f"no answer within {timeout:.0f} s"
