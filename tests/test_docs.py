"""The README and docs/*.md as a user reads them: every command they show still composes, every link
resolves, and every Makefile target and repository path they name exists.

Each ``python -m vaegan.run|evaluate|explore|report|dashboard ...`` command (fenced code blocks and inline code,
backslash continuations joined, shell variables of the same block and the environment filled in,
placeholders such as ``<run>`` replaced by ``x``) is checked in this process, as its entry point
would check it before doing any work:

- ``vaegan.run``: the command line through ``preflight.check`` (with ``--cfg job``, which is what
  ``python -m vaegan.run ... --cfg job`` checks), then Hydra's compose API and ``validate`` on every
  job. Sweeps are expanded as Hydra's basic sweeper would: the first value of every axis, then each
  other value of one axis at a time, so every value of every axis is composed once; the axes of an
  ``hparams_search`` config (``hydra.sweeper.params``) too, and keys of non-enumerable ones (Optuna's
  intervals) are looked up in the schema. (Hydra 1.3 refuses ``--cfg`` together with ``-m``, so a
  subprocess could not do this either.)
- ``vaegan.evaluate`` and ``vaegan.explore``: ``evaluate.compose_config`` (which explore also uses),
  with ``ckpt_path`` pointing at an empty file in a run directory that holds a ``config.yaml``, then
  ``validate``; explore's own options through ``vaegan.latent.explore.options.parse`` first.
- ``vaegan.report``: its own argparse parser, stopped right after parsing; ``vaegan.dashboard``: its
  ``parse`` (arguments only: nothing is built or saved).

Only composition is checked: ``data.root=/path/to/celeba`` and ``ckpt_path=<run>/...`` are fine.
"""

from __future__ import annotations

import argparse
import copy
import functools
import os
import re
import shlex
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf, open_dict

from tests.conftest import ROOT
from vaegan import dashboard, evaluate, report
from vaegan.config import ConfigError, preflight, register_configs, validate
from vaegan.config.schema import CONF_DIR
from vaegan.latent.explore import options as explore_options

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINKED = [*DOCS, ROOT / "experiments" / "README.md"]  # pages whose links must resolve
README_MAX_LINES = 250
# `python -m vaegan.<tool>` (also after torchrun's options), then its arguments to the end of the line.
TOOL = re.compile(r"(?:\bpython3?|\btorchrun)(?:\s+--?[\w=.-]+)*?\s+-m\s+vaegan\.(run|evaluate|explore|report|dashboard)(?=\s|$)(.*)")
PLACEHOLDER = re.compile(r"<[\w .-]+>")  # <run>, <time>, <sweep dir>: the reader's to fill
VARIABLE = re.compile(r"\$(\w+)|\$\{(\w+)\}")
ASSIGNMENT = re.compile(r"\s*([A-Za-z_]\w*)=(\S+)\s*")
SHELL = {"|", "||", "&&", ";", "&"}  # where the shell ends a command


@dataclass(frozen=True)
class Command:
    where: str  # file:line
    tool: str
    args: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.where}: python -m vaegan.{self.tool} {shlex.join(self.args)}"


def command_of(where: str, text: str, variables: dict[str, str]) -> Command | None:
    """The command in ``text``, or None where there is none or it is only a name (no arguments)."""
    found = TOOL.search(text)
    if not found:
        return None
    rest = VARIABLE.sub(lambda m: variables.get(m[1] or m[2], m[0]), PLACEHOLDER.sub("x", found[2]))
    args = shlex.split(rest, comments=True)
    ends = [i for i, arg in enumerate(args) if arg in SHELL or arg.startswith((">", "2>"))]  # redirection, pipes
    args = tuple(args[:ends[0]] if ends else args)
    return Command(where, found[1], args) if args else None


def documented_commands() -> list[Command]:
    commands = []
    for doc in DOCS:
        lines, fenced, prose, i = doc.read_text().splitlines(), False, [], 0
        variables: dict[str, str] = {}
        while i < len(lines):
            line, start = lines[i], i + 1
            if line.lstrip().startswith("```"):
                fenced, variables = not fenced, dict(os.environ)
            elif fenced:
                while line.endswith("\\") and i + 1 < len(lines):
                    i += 1
                    line = line[:-1] + " " + lines[i].strip()
                assignment = ASSIGNMENT.fullmatch(line)
                if assignment:  # CKPT=outputs/.../last.ckpt, used below as $CKPT
                    variables[assignment[1]] = assignment[2]
                elif command := command_of(f"{doc.name}:{start}", line, variables):
                    commands.append(command)
            else:
                prose.append((start, line))
            i += 1
        text = "\n".join(line for _, line in prose)
        for span in re.finditer(r"(`+)(.+?)\1", text, re.DOTALL):  # inline code, possibly wrapped over lines
            code = span[2].replace("\n", " ")
            if "..." in code:  # an elided command (`python -m vaegan.run -m ... trainer=ddp`), not one to run
                continue
            line = prose[text.count("\n", 0, span.start())][0]
            if command := command_of(f"{doc.name}:{line}", code, dict(os.environ)):
                commands.append(command)
    return commands


COMMANDS = documented_commands()


# --- vaegan.run ---------------------------------------------------------------------------------

@functools.cache
def composed(overrides: tuple[str, ...]):
    """The config Hydra composes for one job, with its ``hydra`` node, as ``vaegan.run`` receives it."""
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=list(overrides), return_hydra_config=True)


@contextmanager
def hydra_running(cfg, output_dir: str):
    """``cfg``'s hydra node set as Hydra sets it for a job (``${hydra:runtime.cwd}`` and
    ``${hydra:runtime.output_dir}`` resolve), and unset afterwards."""
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = output_dir
    HydraConfig.instance().set_config(cfg)
    try:
        yield
    finally:
        HydraConfig.instance().cfg = None


def validated(overrides: tuple[str, ...], updates: list, output_dir: str) -> dict:
    """Composes one job, applies ``updates`` ((key, value) of the job's plain-key sweep values, which
    Hydra applies after the config groups, as here) and runs ``validate`` on it, as
    ``vaegan.run.execute`` does before training; returns the unresolved hydra node."""
    cfg = copy.deepcopy(composed(overrides))
    with hydra_running(cfg, output_dir):
        job = copy.deepcopy(cfg)
        with open_dict(job):
            del job["hydra"]
        for key, value in updates:
            OmegaConf.update(job, key, value, merge=False)
        validate(job)
    return OmegaConf.to_container(cfg.hydra, resolve=False)


def is_group(key: str) -> bool:
    """Whether an override's key chooses a config group option (``model``, ``+experiment``, ``hydra/launcher``)."""
    key = key.lstrip("+~")
    return "/" in key or ("." not in key and (CONF_DIR / key).is_dir())


def axes_of(overrides: list[str]) -> dict[str, list]:
    """Each enumerable sweep of ``overrides``: its key and its values (strings for config groups, which
    are composed; typed values for plain keys, which are set on the composed config)."""
    parser, axes = OverridesParser.create(), {}
    for override in parser.parse_overrides(overrides):
        if override.is_sweep_override() and override.is_discrete_sweep():
            key = override.get_key_element()
            values = list(override.sweep_string_iterator())
            axes[key] = values if is_group(key) else [
                parser.parse_overrides([f"{key}={v}"])[0].value() for v in values]
    return axes


def jobs_of(fixed: list[str], axes: dict[str, list]) -> list[tuple[tuple[str, ...], list]]:
    """(overrides, updates) of jobs that together use every value of every axis: all first values,
    then one axis changed at a time."""
    first = {key: values[0] for key, values in axes.items()}
    changes = [{}] + [{key: value} for key, values in axes.items() for value in values[1:]]
    jobs = []
    for change in changes:
        job = {**first, **change}
        groups = (*fixed, *(f"{k}={v}" for k, v in job.items() if is_group(k)))
        jobs.append((groups, [(k.lstrip("+"), v) for k, v in job.items() if not is_group(k)]))
    return jobs


def check_run(args: tuple[str, ...], output_dir: str) -> None:
    preflight.check([*args, "--cfg", "job"])  # the command line, as vaegan.run checks it before Hydra
    overrides, options = preflight.overrides_of(list(args))
    parsed = OverridesParser.create().parse_overrides(overrides)
    sweeps = [o.input_line for o in parsed if o.is_sweep_override()]
    fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
    axes = axes_of(sweeps)
    hydra = validated(*jobs_of(fixed, axes)[0], output_dir)
    multirun = bool(options & {"-m", "--multirun"}) or getattr(hydra["mode"], "name", hydra["mode"]) == "MULTIRUN"
    if sweeps and not multirun:
        raise ConfigError(f"{sweeps[0]} sweeps, but the command is no multirun: add -m")
    if multirun:  # the sweeper's own axes (hparams_search=...); one on the command line replaces the file's
        given = {o.key_or_group for o in parsed}
        for key, value in (hydra["sweeper"].get("params") or {}).items():
            if key in given:
                continue
            override = f"{key}={value}"
            problem = preflight.key_error(override)
            if problem:
                raise ConfigError(f"hydra.sweeper.params: {problem}")
            axes.update(axes_of([override]))
    for job in jobs_of(fixed, axes):
        validated(*job, output_dir)


# --- vaegan.evaluate, vaegan.explore, vaegan.report ---------------------------------------------

@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A run directory as training leaves it, for evaluate and explore to read: ``config.yaml`` and an
    (empty) ``checkpoints/last.ckpt``, which only its existence matters for here."""
    run = tmp_path_factory.mktemp("run")
    cfg = copy.deepcopy(composed(("+experiment=quickstart",)))
    with hydra_running(cfg, str(run)):
        job = copy.deepcopy(cfg)
        with open_dict(job):
            del job["hydra"]
        OmegaConf.save(job, run / "config.yaml", resolve=True)
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "last.ckpt").touch()
    return run


def with_checkpoint(overrides: list[str], run: Path) -> list[str]:
    """``overrides`` with ``ckpt_path`` (a placeholder in the docs) pointing at ``run``'s checkpoint."""
    ckpt = run / "checkpoints" / "last.ckpt"
    return [f"ckpt_path={ckpt}" if o.split("=", 1)[0].lstrip("+") == "ckpt_path" else o for o in overrides]


def check_evaluate(args: tuple[str, ...], run: Path) -> None:
    cfg, _ = evaluate.compose_config(with_checkpoint(list(args), run))
    validate(cfg)


def check_explore(args: tuple[str, ...], run: Path) -> None:
    _, _, overrides = explore_options.parse(list(args))
    check_evaluate(tuple(overrides), run)  # explore's Explorer composes its overrides exactly so


class Parsed(Exception):
    """Raised with the namespace once report's parser has parsed, so that nothing is read or written."""


def check_report(args: tuple[str, ...], monkeypatch, capsys) -> None:
    parse_args = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, argv=None, namespace=None):
        raise Parsed(parse_args(self, argv, namespace))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    try:
        report.main(list(args))
    except Parsed:
        return
    except SystemExit as exit_:
        raise ConfigError(f"argparse exits with status {exit_.code}: {capsys.readouterr().err.strip()}") from None
    finally:
        monkeypatch.undo()
    raise AssertionError("report.main returned without parsing its arguments")


def check(command: Command, run: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    """Raises (ConfigError, ExploreError, ...) where the command would not start."""
    if command.tool == "run":
        check_run(command.args, str(tmp_path))
    elif command.tool == "evaluate":
        check_evaluate(command.args, run)
    elif command.tool == "explore":
        check_explore(command.args, run)
    elif command.tool == "dashboard":
        check_dashboard(command.args, capsys)
    else:
        check_report(command.args, monkeypatch, capsys)


def check_dashboard(args: tuple[str, ...], capsys) -> None:
    try:
        dashboard.parse(list(args))
    except SystemExit as exit_:
        raise ConfigError(f"argparse exits with status {exit_.code}: {capsys.readouterr().err.strip()}") from None


def test_the_docs_show_commands_of_every_entry_point():
    tools = {c.tool for c in COMMANDS}
    assert tools == {"run", "evaluate", "explore", "report", "dashboard"}, tools
    assert len(COMMANDS) > 40, len(COMMANDS)


@pytest.mark.slow  # about 35 composes of Hydra's and 15 of evaluate's: 30-60 s on 2 busy cores
def test_every_documented_command_composes(run_dir, tmp_path, monkeypatch, capsys):
    failures = []
    for command in COMMANDS:
        try:
            check(command, run_dir, tmp_path, monkeypatch, capsys)
        except Exception as err:  # noqa: BLE001 - every failing command is listed, with its error
            failures.append(f"{command}\n    {type(err).__name__}: {str(err).strip().splitlines()[0]}")
    assert not failures, f"{len(failures)} documented command(s) do not compose:\n" + "\n".join(failures)


@pytest.mark.parametrize("tool,args,error", [
    ("run", ["+experiment=quickstart", "model.widht=8"], "did you mean model.width"),
    ("run", ["+experiment=quickstart", "model=vaegann"], "no such option"),
    ("run", ["-m", "+experiment=quickstart", "controller=began,pidd"], "pidd"),  # a sweep value preflight skips
    ("run", ["+experiment=quickstart", "seed=0,1"], "add -m"),
    ("run", ["+experiment=quickstart", "data.image_size=48"], "power of two"),  # validate's
    ("evaluate", ["ckpt_path=x", "metrics.num_sampels=10"], "num_sampels"),
    ("explore", ["sample", "ckpt_path=x", "n=abc"], "n takes an integer"),
    ("explore", ["edit", "ckpt_path=x", "data.rooot=/data"], "rooot"),
    ("report", ["multirun/x", "--bnd", "0.03"], "unrecognized arguments"),
    ("dashboard", ["my-team", "--dry-run"], "give the W&B entity and project"),
])
def test_a_command_that_would_not_start_fails(tool, args, error, run_dir, tmp_path, monkeypatch, capsys):
    with pytest.raises(Exception, match=re.escape(error)):
        check(Command("test", tool, tuple(args)), run_dir, tmp_path, monkeypatch, capsys)


# --- links, Makefile targets, paths, length -------------------------------------------------------

def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(doc: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", doc.read_text(), flags=re.DOTALL | re.MULTILINE)
    return {slug(h) for h in re.findall(r"^#+ (.+)$", text, re.MULTILINE)}


def without_code(text: str) -> str:
    return re.sub(r"`[^`\n]*`", "", re.sub(r"^```.*?^```", "", text, flags=re.DOTALL | re.MULTILINE))


@pytest.mark.parametrize("doc", LINKED, ids=lambda d: str(d.relative_to(ROOT)))
def test_every_relative_link_resolves(doc):
    text = without_code(doc.read_text())
    targets = re.findall(r"\]\(([^)\s]+)\)", text) + re.findall(r'<img src="([^"]+)"', text)
    broken = []
    for target in targets:
        if re.match(r"\w+://|mailto:", target):
            continue
        path, _, anchor = target.partition("#")
        file = (doc.parent / path).resolve() if path else doc
        if not file.exists():
            broken.append(f"{target}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target}: no heading #{anchor} in {file.relative_to(ROOT)}")
    assert not broken, f"{doc.name}: " + "; ".join(broken)


def test_every_named_make_target_exists():
    targets = set(re.findall(r"^([\w.-]+):", (ROOT / "Makefile").read_text(), re.MULTILINE))
    named = {(doc.name, t) for doc in DOCS for t in re.findall(r"(?:^|`)\s*make\s+([a-z][\w-]*)", doc.read_text(), re.MULTILINE)}
    missing = sorted(f"{doc}: make {t}" for doc, t in named if t not in targets and t != "install")
    assert not missing, missing


def test_every_named_repository_path_exists():
    roots = ("vaegan/", "tests/", "conf/", "experiments/", "docs/", "hydra_plugins/", ".ci/")
    missing = set()
    for doc in DOCS:
        for path in re.findall(r"`([\w./-]+)`", doc.read_text()):
            if path.startswith(roots) and not (ROOT / path.rstrip("/")).exists():
                missing.add(f"{doc.name}: {path}")
    assert not missing, sorted(missing)


def test_the_readme_is_a_front_door():
    lines = (ROOT / "README.md").read_text().count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move detail into a docs/ page"
