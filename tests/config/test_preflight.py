"""The command line checked before Hydra composes it: each bad argument is one line naming it and the fix."""

import os
import re
import shlex
import subprocess
import sys

import pytest

from tests.conftest import ROOT, run_cli
from vaegan.config import preflight
from vaegan.training import run_lock
from vaegan.config import ConfigError


@pytest.mark.parametrize("argv,message", [
    (["data.root=~/data"], r"data\.root=~/data: the shell does not expand ~ .* write data\.root=\$HOME/data"),
    (["data.root=/my", "faces"], r"'faces' is not a key=value override: .* data\.root='/my faces'"),
    (["model.widht=8"], r"model\.widht: no key 'widht' in model; did you mean model\.width\?"),
    (["+model.widht=8"], r"model\.widht: no key 'widht' in model; did you mean model\.width\?"),
    (["~model.widht"], r"model\.widht: no key 'widht'"),
    (["itrations=5"], r"no top-level key 'itrations'; did you mean iterations\?"),
    (["data.batch_size=many"], r"data\.batch_size=many: must be an integer"),
    (["model.optimizer.lr=fast"], r"model\.optimizer\.lr=fast: must be a number"),
    (["model=vaegann"], r"model=vaegann: no such option \(conf/model/\); choose from began, .*vaegan"),
    (["logger=[csv,wamdb]"], r"logger=wamdb: no such option"),
])
def test_bad_arguments_get_one_line_naming_them(argv, message):
    with pytest.raises(ConfigError, match=message) as err:
        preflight.check([*argv, "--cfg", "job"])
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("argv", [
    ["+experiment=celeba64", "data.root=/data", "model=began", "trainer=ddp_cpu", "~model.ema"],
    ["model.alpha=0.1,0.3", "-m", "hydra/launcher=slurm", "logger=[csv,wandb]", "controller=null"],
    ["trainer.devices=[0,1]", "model.logvar_init=null", "data.root='/my faces'", "--config-name", "train"],
])
def test_good_command_lines_pass(argv):
    preflight.check([*argv, "--cfg", "job"])


def test_run_directories_that_cannot_be_written(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(ConfigError, match="is an existing file; name a folder"):
        preflight.check([f"hydra.run.dir={a_file}"])
    with pytest.raises(ConfigError, match=f"{a_file} is a file, so no folder can be made below it"):
        preflight.check([f"hydra.run.dir={a_file}/run"])


def test_a_read_only_run_directory(read_only_dir):
    with pytest.raises(ConfigError, match=f"hydra.run.dir={read_only_dir}/run: cannot write in {read_only_dir}"):
        preflight.check([f"hydra.run.dir={read_only_dir}/run"])


def test_an_explicit_run_directory_is_locked_before_hydra_writes_into_it(tmp_path):
    try:
        preflight.check(["+experiment=quickstart", f"hydra.run.dir={tmp_path}"])
        assert (tmp_path / run_lock.LOCK_NAME).stat().st_size > 0
    finally:
        run_lock.release(tmp_path)


def documented_commands() -> list[tuple[str, list[str]]]:
    """(file, arguments) of every ``python -m vaegan.run`` line in the fenced code blocks of the docs,
    with backslash continuations joined, comments dropped and placeholders filled."""
    commands = []
    for doc in [ROOT / "README.md", *ROOT.glob("docs/**/*.md"), ROOT / "experiments" / "README.md"]:
        fenced, text = False, doc.read_text().replace("\\\n", " ")
        for line in text.splitlines():
            if line.lstrip().startswith("```"):
                fenced = not fenced
            elif fenced and "python -m vaegan.run " in line:
                words = shlex.split(re.sub(r"<[\w .-]+>", "x", line), comments=True)  # <run>: the user's to fill
                args = words[words.index("vaegan.run") + 1:]
                commands.append((doc.name, [os.path.expandvars(a) for a in args]))
    return commands


def test_every_documented_command_line_parses():
    """No README command fails on its own syntax: no unquoted ~ (bash leaves it alone after '=',
    and Hydra cannot parse it), no misspelled key or group."""
    assert len(documented_commands()) > 20
    for doc, args in documented_commands():
        try:
            preflight.check([*args, "--cfg", "job"])
        except ConfigError as err:
            pytest.fail(f"{doc}: python -m vaegan.run {' '.join(args)}: {err}")


def test_config_errors_come_before_torch_is_imported(tmp_path):
    """A bad value is reported before torch and Lightning are imported (which takes seconds)."""
    probe = ("import atexit, runpy, sys; "
             "atexit.register(lambda: print('torch imported:', 'torch' in sys.modules, file=sys.stderr)); "
             "sys.argv = ['vaegan.run', *sys.argv[1:]]; runpy.run_module('vaegan.run', run_name='__main__')")
    for bad in ("model.width=-1", "model.widht=8", "trainer.devices=3", "data.image_size=2048"):
        done = subprocess.run([sys.executable, "-c", probe, "+experiment=quickstart", bad, f"hydra.run.dir={tmp_path}"],
                              cwd=ROOT, capture_output=True, text=True, timeout=60)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 1 and lines[-2].startswith("Config error:"), done.stderr
        assert lines[-1] == "torch imported: False", (bad, done.stderr)


def test_config_error_is_the_last_line_of_run_log(tmp_path):
    done = run_cli("+experiment=quickstart", "model.width=-1", f"hydra.run.dir={tmp_path}")
    line = "Config error: model.width=-1: must be positive"
    assert done.returncode == 1 and done.stderr.strip().splitlines() == [line]
    assert (tmp_path / "run.log").read_text().strip().splitlines()[-1] == line


def test_a_cwd_that_cannot_be_written(read_only_dir):
    done = subprocess.run([sys.executable, "-m", "vaegan.run", "+experiment=quickstart"], cwd=read_only_dir,
                          capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"Config error: runs are written under outputs/ in the current folder {read_only_dir}, which cannot be "
        "written; run from a writable folder or set hydra.run.dir"]
