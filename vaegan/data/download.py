"""Downloads that fail fast when offline instead of hanging (urllib has no timeout by default)."""

from __future__ import annotations

import socket
import threading
from pathlib import Path
from urllib.parse import urlparse

from vaegan.data.errors import DataError

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


def download_cifar10(root: Path) -> None:
    """Fetch and unpack CIFAR-10's python batches into ``root`` through torchvision."""
    from torchvision.datasets import CIFAR10

    problem = reachable(CIFAR10.url)
    if problem:
        raise DataError(
            f"data.download=true: cannot reach {CIFAR10.url} ({problem}). On a machine without internet, "
            f"download that file elsewhere, untar it into {root} (giving {root / CIFAR10.base_folder}/) and run again "
            "with data.download=false"
        )
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(READ_TIMEOUT_S)
    try:
        CIFAR10(str(root), train=True, download=True)
    except OSError as err:  # includes timeouts and checksum failures of a partial file
        raise DataError(f"data.download=true: downloading {CIFAR10.url} into {root} failed ({err}); run again or download it by hand") from None
    finally:
        socket.setdefaulttimeout(previous)
