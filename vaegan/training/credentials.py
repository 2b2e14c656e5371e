"""Whether W&B would find an API key without asking (torch- and Lightning-free, for commands that
must answer at once: ``vaegan.dashboard``)."""

from __future__ import annotations

import netrc
import os
from pathlib import Path
from urllib.parse import urlparse

DEFAULT_HOST = "https://api.wandb.ai"


def host() -> str:
    """The W&B server: ``WANDB_BASE_URL``, else W&B's cloud."""
    return os.environ.get("WANDB_BASE_URL", DEFAULT_HOST)


def has_credentials() -> bool:
    """Whether W&B would find an API key without asking: the environment or a netrc entry."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    name = urlparse(host()).hostname or ""
    path = os.environ.get("NETRC") or str(Path.home() / ".netrc")
    try:
        return Path(path).is_file() and netrc.netrc(path).authenticators(name) is not None
    except (netrc.NetrcParseError, OSError):
        return False
