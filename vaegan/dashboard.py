"""``python -m vaegan.dashboard ENTITY/PROJECT [--name NAME] [--sweep GROUP] [--vary KEY] [--dry-run]``: the W&B workspace.

Creates, or updates when it was saved before, the workspace view NAME of ENTITY/PROJECT: the
sections of ``vaegan.reporting.dashboard`` (docs/tracking.md). ``--dry-run`` prints the view as
JSON and saves nothing: it needs no key and no network. Without a key the command stops at once
with one line saying how to log in; it never prompts. No torch.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

NO_KEY = ("W&B: no API key, so nothing was saved: run `wandb login` (or set WANDB_API_KEY) and try again, "
          "or add --dry-run to print the workspace")
REACH_TIMEOUT_S = 5.0
NAME = "vaegan"  # the view's default name


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m vaegan.dashboard", description=__doc__.splitlines()[2].strip())
    parser.add_argument("target", metavar="ENTITY/PROJECT", help="the W&B entity (user or team) and project")
    parser.add_argument("--name", default=NAME, help=f"the view's name (default {NAME}); the same name updates the view")
    parser.add_argument("--sweep", metavar="GROUP", help="only this sweep's runs: its W&B group, the sweep directory "
                        "as Hydra printed it (multirun/<run_name>/<time>); a local one also gives the keys it varied")
    parser.add_argument("--vary", metavar="KEY", action="append", default=[], help="a config key to add to the "
                        "parallel coordinates (repeatable; the PID gains are always there)")
    parser.add_argument("--dry-run", action="store_true", help="print the workspace as JSON; save nothing")
    args = parser.parse_args(argv)
    entity, _, project = args.target.partition("/")
    if not entity or not project or "/" in project:
        parser.error(f"ENTITY/PROJECT: got {args.target!r}; give the W&B entity and project, e.g. my-team/vaegan")
    args.entity, args.project = entity, project
    args.sweep = args.sweep.rstrip("/") if args.sweep else None
    return args


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit status."""
    args = parse(argv)
    if not args.dry_run:  # before anything slow: the one line within a second
        from vaegan.training import credentials
        from vaegan.utils.download import reachable

        if not credentials.has_credentials():
            return fail(NO_KEY)
        if (why := reachable(credentials.host(), REACH_TIMEOUT_S)) is not None:
            return fail(f"W&B: cannot reach {credentials.host()} ({why}), so nothing was saved; try again with a network, "
                        "or add --dry-run to print the workspace")

    try:
        from vaegan import compat
        from vaegan.reporting import dashboard
    except ImportError as err:
        if err.name not in ("wandb", "wandb_workspaces"):
            raise
        return fail(f"python -m vaegan.dashboard needs {err.name.replace('_', '-')}: pip install -e '.[dashboard]'")

    varied = list(args.vary)
    if args.sweep and (Path(args.sweep) / "multirun.yaml").is_file():
        varied += dashboard.swept_keys(Path(args.sweep))
    workspace = dashboard.workspace(args.entity, args.project, args.name, args.sweep, varied)
    if args.dry_run:
        spec = compat.workspace_spec(workspace)
        print(json.dumps(spec, indent=2))
        described = dashboard.describe(spec)
        print(f"{len(described)} sections, {sum(len(s['panels']) for s in described)} panels; nothing saved (--dry-run)",
              file=sys.stderr)
        return 0
    view = dashboard.view_name(args.entity, args.project, args.name)
    try:
        compat.name_view(workspace, view, compat.saved_view_id(args.entity, args.project, view))
        workspace.save()
    except Exception as err:  # noqa: BLE001 - W&B's errors (auth, permissions, server) become one line
        return fail(f"W&B: could not save the workspace to {args.target} ({type(err).__name__}: "
                    f"{str(err).strip().splitlines()[0][:200] if str(err).strip() else 'no message'})")
    print(f"saved the workspace {args.name!r}: {workspace.url}")
    return 0


def fail(line: str) -> int:
    print(line, file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
