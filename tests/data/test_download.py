"""vaegan.data.download: downloads fail fast, with a message saying what to do, when offline."""

import re
import socket
import time

import pytest

from tests.data.test_sources import CIFAR10_URL, assert_message
from vaegan.data import DataError
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
