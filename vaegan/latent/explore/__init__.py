"""``python -m vaegan.explore <command> ckpt_path=<ckpt> [options] [config overrides]``: the latent
space of a trained model (paper Sec. 5.5, Figs. 4, 6 and 8).

Commands: ``sample``, ``reconstruct``, ``interpolate``, ``attributes``, ``edit``. Options are the
fields of ``options.Options``; any other key overrides the run's own ``config.yaml`` (typically
``data.root=...``), exactly as in ``python -m vaegan.evaluate``. Outputs go to ``<run dir>/explore``
(or ``out=<dir>``), each beside a ``.json`` that records the command, its arguments and the
checkpoint's hash. ``options`` parses the command line, ``commands.Explorer`` runs the commands.
"""

from __future__ import annotations

import sys

from vaegan.latent.explore.options import USAGE, ExploreError, Options, parse

__all__ = ["main", "ExploreError", "Options", "parse"]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or any(a in ("-h", "--help") for a in argv):
        print(USAGE, file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    try:
        command, options, overrides = parse(argv)  # before the heavy imports: a typo is reported at once
    except ExploreError as err:
        print(f"Explore error: {err}", file=sys.stderr)
        return 2
    from rich.console import Console

    from vaegan.config import ConfigError
    from vaegan.data import DataError
    from vaegan.latent.explore.commands import Explorer
    from vaegan.metrics import MetricsError

    console = Console(soft_wrap=True, width=max(Console().width, 132))  # whole table rows in logs too
    try:
        explorer = Explorer(command, options, overrides, console)
        getattr(explorer, command)()
    except (ConfigError, ExploreError, DataError, MetricsError) as err:
        kind = next(k for t, k in [(ExploreError, "Explore"), (ConfigError, "Config"), (DataError, "Data"),
                                   (MetricsError, "Metrics")] if isinstance(err, t))
        print(f"{kind} error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # e.g. the disk filled up while writing; nothing is left half-written
        where = f" ({err.filename})" if err.filename else ""
        print(f"Explore error: {err.strerror or err}{where}; check that path and its free space", file=sys.stderr)
        return 2
    return 0
