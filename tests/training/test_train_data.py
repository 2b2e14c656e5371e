"""End to end through the command line on real data: CelebA trains from a layout in tmp_path, and
data problems stop the run with a one-line message, without a traceback."""

import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest
import torch

from tests.conftest import SHARED, make_celeba_layout, require_shared, run_cli

pytestmark = pytest.mark.slow  # every test reads one module fixture: three `python -m vaegan.run` runs

SMALL = ["iterations=3", "model.width=4", "model.latent_dim=8", "data.batch_size=8", "data.image_size=16",
         "callbacks.progress_bar.enabled=false", "trainer.enable_model_summary=false"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The three command lines of this module, run at once (each spends most of its time importing)."""
    tmp = tmp_path_factory.mktemp("cli")
    (tmp / "empty").mkdir()
    commands = {}
    root = None
    if (SHARED / "celeba").is_dir():  # the other two commands need no data
        root = make_celeba_layout(tmp / "data")
        commands["celeba"] = ["+experiment=celeba64", f"data.root={root}", f"data.cache_dir={tmp / 'cache'}", *SMALL,
                              f"hydra.run.dir={tmp / 'run'}"]
    commands.update({
        "empty_root": ["+experiment=celeba64", f"data.root={tmp / 'empty'}", f"data.cache_dir={tmp / 'cache-empty'}", *SMALL,
                       f"hydra.run.dir={tmp / 'run-empty'}"],
        "folder_without_root": ["data=folder", f"data.cache_dir={tmp / 'cache-folder'}", *SMALL,
                                f"hydra.run.dir={tmp / 'run-folder'}"],
    })

    def timed(overrides):
        start = time.perf_counter()
        result = run_cli(*overrides, timeout=240)
        return SimpleNamespace(result=result, seconds=time.perf_counter() - start)

    with ThreadPoolExecutor(len(commands)) as pool:
        futures = {name: pool.submit(timed, overrides) for name, overrides in commands.items()}
    return SimpleNamespace(tmp=tmp, root=root, **{name: future.result() for name, future in futures.items()})


def test_celeba_trains_from_the_command_line(runs):
    require_shared("celeba")
    result, run_dir = runs.celeba.result, runs.tmp / "run"
    assert result.returncode == 0, result.stderr[-3000:]
    assert "cached 200 celeba images at 16x16" in result.stderr
    assert "200 of the 4,020 images listed in list_attr_celeba.txt are present" in result.stdout + result.stderr
    [cache] = [p for p in (runs.tmp / "cache").iterdir() if p.is_dir()]
    assert cache.name.startswith("celeba-16px-3c-") and (cache / "meta.json").is_file()
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert state["global_step"] == 3 * 3  # three iterations, three optimizer steps each
    for grid in ("samples", "reconstructions"):
        png = run_dir / grid / "iter_0000003.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"root: {runs.root}" in (run_dir / "config.yaml").read_text()


def test_missing_celeba_stops_with_the_expected_layout(runs):
    result = runs.empty_root.result
    assert result.returncode != 0
    assert runs.empty_root.seconds < 60  # no hang: it stops as soon as the layout is checked
    stderr = result.stderr
    assert f"Data error: data=celeba: {runs.tmp / 'empty' / 'celeba' / 'img_align_celeba'} not found" in stderr
    assert "Expected layout:" in stderr and "<data.root>/celeba/list_attr_celeba.txt" in stderr
    assert "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html" in stderr
    assert "Traceback" not in stderr
    assert not (runs.tmp / "run-empty" / "checkpoints" / "last.ckpt").exists()
    assert not (runs.tmp / "cache-empty").exists()


def test_folder_without_root_is_a_config_error(runs):
    result = runs.folder_without_root.result
    assert result.returncode != 0
    assert "Config error: data.root=None: data=folder needs data.root" in result.stderr
    assert "Traceback" not in result.stderr
