"""Tests of ``vaegan.latent.explore.options``: the explore commands' options, parsed and checked
before any checkpoint is loaded (no model, no data: each test runs in milliseconds)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import ROOT
from vaegan.latent.explore import main
from vaegan.latent.explore.options import COMMON, EXPECTED, OPTIONS_OF, ExploreError, Options, parse


def test_every_option_belongs_to_a_command_and_has_an_expected_type_text():
    names = {f for f in Options.__dataclass_fields__}
    used = set(COMMON).union(*OPTIONS_OF.values())
    assert used == names
    for f in Options.__dataclass_fields__.values():
        assert f.type in EXPECTED, f.name


def test_parse_splits_options_from_config_overrides():
    command, options, overrides = parse(["interpolate", "ckpt_path=/r/last.ckpt", "pairs=[[0,1],[2,3]]", "steps=5",
                                         "mode=spherical", "data.root=/data", "out=/tmp/o"])
    assert command == "interpolate"
    assert overrides == ["ckpt_path=/r/last.ckpt", "data.root=/data"]
    assert (options.pairs, options.steps, options.mode, options.out) == ([[0, 1], [2, 3]], 5, "spherical", "/tmp/o")
    assert isinstance(options, Options) and options.seed == 0 and options.batch_size == 256  # the defaults


def test_sample_defaults_to_64_images_the_others_to_8():
    assert parse(["sample"])[1].n == 64
    assert parse(["sample", "n=5"])[1].n == 5
    assert parse(["reconstruct"])[1].n == 8


def test_values_take_their_options_type():
    _, o, _ = parse(["edit", "attrs=[Smiling,Male]", "weights=[-1,0,2]", "measure_weight=2", "combine=true",
                     "indices=[3,4]"])
    assert o.attrs == ["Smiling", "Male"] and o.weights == [-1.0, 0.0, 2.0] and all(isinstance(w, float) for w in o.weights)
    assert o.measure_weight == 2.0 and o.combine is True and o.indices == [3, 4]


def test_the_measure_flag_is_measure_true():
    assert parse(["edit", "attrs=[Smiling]", "--measure"])[1].measure is True
    assert parse(["edit", "attrs=[Smiling]"])[1].measure is False


@pytest.mark.parametrize("argv, message", [
    ([], "no command given; the first argument must be one of sample, reconstruct, interpolate, attributes, edit "
         "(python -m vaegan.explore --help)"),
    (["paint"], "'paint' is not a command; the first argument must be one of"),
    (["intrepolate"], "'intrepolate' is not a command (did you mean interpolate?)"),
    (["sample", "steps=3"], "steps= is not an option of sample; its options: out, device, batch_size, n, seed, temperature, nrow"),
    (["sample", "n=abc"], "n=abc: n takes an integer"),
    (["sample", "temperature=hot"], "temperature=hot: temperature takes a number"),
    (["reconstruct", "indices=5"], "indices=5: indices takes a list of image indices, e.g. [0,1,2]"),
    (["interpolate", "pairs=[[a,1]]"], "pairs=[[a,1]]: pairs takes a list of index pairs, e.g. [[0,1],[2,3]]"),
    (["edit", "combine=maybe"], "combine=maybe: combine takes true or false"),
    (["interpolate", "pairs=[[0,1]"], "pairs=[[0,1]: cannot read it as key=value ("),
    (["sample", "n=0"], "n=0: must be >= 1"),
    (["sample", "nrow=0"], "nrow=0: must be >= 1"),
    (["sample", "batch_size=0"], "batch_size=0: must be >= 1"),
    (["interpolate", "steps=1"], "steps=1: needs at least 2 (the endpoints)"),
    (["sample", "seed=-1"], "seed=-1: must be in [0, 2^63)"),
    (["sample", f"seed={2**63}"], f"seed={2**63}: must be in [0, 2^63)"),
    (["sample", "temperature=-0.5"], "temperature=-0.5: must be a finite number >= 0"),
    (["sample", "temperature=inf"], "temperature=inf: must be a finite number >= 0"),
    (["interpolate", "mode=cubic"], "mode='cubic': use linear or spherical"),
    (["edit", "source=webcam"], "source='webcam': use real (encoded images of the split) or random"),
    (["edit", "weights=[]"], "weights=[]: needs at least one weight"),
    (["edit", "weights=[0,nan]"], "weights=[0.0, nan]: must be finite numbers"),
    (["edit", "measure_weight=inf"], "measure_weight=inf: must be a finite number"),
    (["reconstruct", "indices=[]"], "indices=[]: needs at least one index"),
    (["edit", "attrs=[]"], "attrs=[]: needs at least one attribute"),
    (["interpolate", "pairs=[]"], "pairs=[]: needs at least one pair"),
    (["interpolate", "pairs=[[0,1,2]]"], "pairs=[[0, 1, 2]]: each pair is two indices"),
    (["interpolate", "pairs=[[0,1]]", "files=[a.png,b.png]"], "pairs=[[0, 1]]: give pairs= (images of the split) or files=, not both"),
    (["interpolate", "files=[a.png]"], "files=['a.png']: needs at least one pair of images"),
    (["edit", "measure_n=0"], "measure_n=0: must be >= 1"),
    (["edit", "classifier_epochs=0"], "classifier_epochs=0: must be >= 1"),
    (["sample", "device=gpu7"], "device='gpu7': use auto, cpu, cuda or cuda:N"),
])
def test_bad_options_are_refused_with_the_fix(argv, message):
    with pytest.raises(ExploreError) as err:
        parse(argv)
    assert str(err.value).startswith(message), str(err.value)


def test_good_edge_values_pass():
    assert parse(["sample", f"seed={2**63 - 1}", "temperature=0", "device=cpu"])[1].seed == 2**63 - 1
    assert parse(["interpolate", "steps=2", "files=[a.png,b.png]"])[1].files == ["a.png", "b.png"]


def test_main_prints_one_line_and_exits_2_on_bad_options(capsys):
    assert main(["sample", "n=0"]) == 2
    captured = capsys.readouterr()
    assert captured.err == "Explore error: n=0: must be >= 1\n" and captured.out == ""


def test_main_prints_the_usage(capsys):
    assert main(["sample", "--help"]) == 0
    assert capsys.readouterr().out.startswith("usage: python -m vaegan.explore {sample,reconstruct,interpolate,attributes,edit}")
    assert main([]) == 2
    assert "usage: python -m vaegan.explore" in capsys.readouterr().err


def test_a_bad_option_is_reported_before_torch_is_imported():
    code = ("import sys\nfrom vaegan.latent.explore import main\n"
            "rc = main(['sample', 'nrow=0'])\nassert 'torch' not in sys.modules, 'torch was imported'\nsys.exit(rc)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == "Explore error: nrow=0: must be >= 1"
