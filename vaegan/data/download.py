"""CIFAR-10's download, failing fast when offline (``vaegan.utils.download.reachable``)."""

from __future__ import annotations

import socket
from pathlib import Path

from vaegan.data.errors import DataError
from vaegan.utils.download import READ_TIMEOUT_S, reachable

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
