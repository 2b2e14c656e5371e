"""vaegan.data.download: downloads fail fast, with a message saying what to do, when offline."""

import re
import socket
import threading
import time

import pytest

from tests.test_data_sources import CIFAR10_URL, assert_message
from vaegan.data import DataError
from vaegan.data import download as download_module
from vaegan.data.sources import CIFAR10Source


def internet_reachable() -> bool:
    try:
        socket.create_connection(("www.cs.toronto.edu", 443), timeout=3).close()
        return True
    except OSError:
        return False


def test_cifar10_download_offline_fails_fast(tmp_path):
    if internet_reachable():
        pytest.skip("this machine is online: the test is about failing without internet (it would download 170 MB)")
    start = time.perf_counter()
    with pytest.raises(DataError) as err:
        CIFAR10Source(tmp_path, download=True)
    elapsed = time.perf_counter() - start
    assert elapsed < 30
    assert_message(err, [re.escape(f"data.download=true: cannot reach {CIFAR10_URL}"), "data.download=false",
                         re.escape(str(tmp_path / "cifar-10-batches-py"))])
    assert not (tmp_path / "cifar-10-batches-py").exists()


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
