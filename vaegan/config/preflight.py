"""The command line, checked before Hydra composes it (and long before torch is imported): overrides
Hydra's grammar rejects, keys the schema does not have, and a run directory that cannot be written
or is in use. Each problem is one ConfigError line naming the argument and the fix."""

from __future__ import annotations

from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import OverrideParseException

from vaegan.training import run_lock
from vaegan.config.schema import CONF_DIR, ConfigError, TrainConfig
from vaegan.utils.files import nearest_existing, unwritable
from vaegan.config.keys import unknown_key, wrong_type

TAKES_VALUE = ("--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd", "--experimental-rerun",
               "--package", "-p", "--cfg", "-c")
INFO_TOPICS = ("all", "config", "defaults", "defaults-tree", "plugins", "searchpath")  # --info's optional value
NO_RUN_OPTIONS = ("--cfg", "-c", "--help", "-h", "--hydra-help", "--info", "-i", "--shell-completion", "-sc",
                  "--version", "-m", "--multirun")  # these print or sweep: no single run directory to check


def overrides_of(argv: list[str]) -> tuple[list[str], set[str]]:
    """(overrides, option names) of a Hydra command line."""
    overrides, options, i = [], set(), 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("-"):
            name = arg.split("=", 1)[0]
            options.add(name)
            has_value = "=" not in arg and i + 1 < len(argv) and (
                name in TAKES_VALUE or name in ("--info", "-i") and argv[i + 1] in INFO_TOPICS)
            i += has_value
        else:
            overrides.append(arg)
        i += 1
    return overrides, options


def parse_error(arg: str, previous: str | None) -> str | None:
    """Why Hydra's grammar rejects ``arg``, with the fix; None when it parses."""
    key, eq, value = arg.partition("=")
    if eq and value.startswith("~"):
        return (f"{arg}: the shell does not expand ~ after '=', and Hydra cannot read it; "
                f"write {key}=$HOME{value[1:]}")
    try:
        OverridesParser.create().parse_overrides([arg])
    except OverrideParseException as err:
        if not eq and previous is not None and "=" in previous:
            return (f"{arg!r} is not a key=value override: the shell split a value with spaces; quote it, "
                    f"e.g. {previous.partition('=')[0]}='{previous.partition('=')[2]} {arg}'")
        first = str(err).splitlines()[0]
        return f"{arg}: Hydra cannot parse it ({first}); quote values with spaces or special characters: key='...'"
    return None


def key_error(override: str) -> str | None:
    """Why the key, group option or value of one parsed override does not exist or fit; None when it does."""
    [parsed] = OverridesParser.create().parse_overrides([override])
    key = parsed.key_or_group
    if key.startswith("hydra") or "/" in key or parsed.package is not None:
        return None
    if "." not in key and (CONF_DIR / key).is_dir():  # a config group: model=began, +experiment=celeba64
        return None if parsed.is_delete() or parsed.is_sweep_override() else option_error(key, parsed.value())
    if parsed.is_delete() or parsed.is_sweep_override():
        return unknown_key(key, TrainConfig)
    return unknown_key(key, TrainConfig) or wrong_type(key, parsed.value(), TrainConfig)


def option_error(group: str, value: object) -> str | None:
    """Why ``group=value`` names no file of conf/<group>/ (with the options there)."""
    options = sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
    names = value if isinstance(value, list) else [value]  # logger=[csv,wandb]
    missing = [str(v) for v in names if v is not None and str(v) not in options]
    if not missing:
        return None
    return f"{group}={missing[0]}: no such option (conf/{group}/); choose from {', '.join(options)}"


def check_writable(run_dir: str) -> str | None:
    """Why ``run_dir`` cannot be a run directory (an existing file, a place that cannot be written)."""
    path = Path(run_dir).expanduser()
    if path.exists() and not path.is_dir():
        return f"hydra.run.dir={run_dir}: is an existing file; name a folder (it is created if needed)"
    existing = nearest_existing(path)
    if not existing.is_dir():
        return f"hydra.run.dir={run_dir}: {existing} is a file, so no folder can be made below it; name another folder"
    if unwritable(existing):
        return f"hydra.run.dir={run_dir}: cannot write in {existing} (read-only or no permission); name a writable folder"
    return None


def check(argv: list[str]) -> None:
    """Raises ConfigError for the first bad argument; locks an explicit ``hydra.run.dir`` for this
    process (raising RunDirectoryInUse) before Hydra writes into it."""
    overrides, options = overrides_of(argv)
    previous = None
    for arg in overrides:
        problem = parse_error(arg, previous) or key_error(arg)
        if problem:
            raise ConfigError(problem)
        previous = arg
    if options & set(NO_RUN_OPTIONS):
        return
    run_dir = next((o.partition("=")[2] for o in reversed(overrides)  # Hydra applies the last one
                    if o.partition("=")[0].lstrip("+") == "hydra.run.dir"), None)
    if run_dir is None:
        if unwritable(Path.cwd()):
            raise ConfigError(f"runs are written under outputs/ in the current folder {Path.cwd()}, which cannot be "
                              "written; run from a writable folder or set hydra.run.dir")
        return
    if "${" in run_dir:
        return  # resolved by Hydra; the run locks it once it is known
    problem = check_writable(run_dir)
    if problem:
        raise ConfigError(problem)
    if run_lock.launcher_rank() != 0:
        return  # the run's other ranks (srun, torchrun) check rank 0's lock once it has taken it
    try:
        run_lock.acquire(run_dir)
    except OSError as err:
        raise ConfigError(f"hydra.run.dir={run_dir}: cannot be created or written ({err.strerror}); "
                          "name a writable folder") from None
