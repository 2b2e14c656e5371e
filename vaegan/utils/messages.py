"""The line that ends a run: on stderr, and as the last line of run.log, so a cluster job's log says
why it stopped."""

from __future__ import annotations

import logging
import sys


def final_line(line: str, console: bool = True) -> None:
    """Appends ``line`` to every log file of the root logger (Hydra's run.log) and prints it to stderr."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.flush()
            with open(handler.baseFilename, "a") as log:
                log.write(line + "\n")
    if console:
        print(line, file=sys.stderr, flush=True)
