"""vaegan.utils.download: a probe of an unreachable host returns within its timeout."""

import threading
import time

from vaegan.utils import download as download_module


def test_reachable_gives_up_on_a_stalled_lookup(monkeypatch):
    """getaddrinfo ignores socket timeouts; the probe must return anyway."""
    release = threading.Event()

    def stalled(*args, **kwargs):
        release.wait(10)
        raise OSError("released by the test")

    monkeypatch.setattr(download_module.socket, "create_connection", stalled)
    start = time.perf_counter()
    try:
        assert download_module.reachable("https://example.invalid/x", timeout=1) == "no answer within 1 s"
        assert time.perf_counter() - start < 3
    finally:
        release.set()  # let the abandoned probe thread end
