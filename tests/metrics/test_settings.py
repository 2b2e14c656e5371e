"""Tests of ``vaegan.metrics.settings``: from ``cfg.metrics`` to a device, an extractor and the
arguments of ``evaluate_generator``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from vaegan.config.schema import MetricsConfig
from vaegan.metrics import settings
from vaegan.metrics.extractors import MetricsError
from vaegan.metrics.settings import (
    evaluation_kwargs, extractor_from, extractor_path, reference_cache_dir, resolve_device,
)
from vaegan.utils.hashing import sha256_file


def metrics_cfg(**changes):
    return OmegaConf.merge(OmegaConf.structured(MetricsConfig), changes)


def test_resolve_device_names_the_fix_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    for name in ("cuda", "cuda:1"):
        with pytest.raises(MetricsError, match=rf"metrics.device='{name}': this machine has no CUDA device; use auto or cpu"):
            resolve_device(name)


def test_resolve_device_picks_cuda_when_there_is_one(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)


def test_extractor_path_passes_names_and_paths_through():
    assert extractor_path("inception-v3-compat") == "inception-v3-compat"
    assert extractor_path("~/weights/inception.pt") == "~/weights/inception.pt"


def test_an_alias_of_a_missing_package_says_what_to_install(monkeypatch):
    monkeypatch.setitem(settings.ALIASES, "no-such-extractor", ("no_such_package_vaegan_test", "model.pt"))
    with pytest.raises(MetricsError) as err:
        extractor_path("no-such-extractor")
    assert str(err.value) == ("metrics.feature_extractor=no-such-extractor: the package no_such_package_vaegan_test is "
                              "not installed; pip install no-such-extractor (the dev install brings it: pip install -e '.[dev]')")


def test_an_alias_resolves_to_a_file_inside_its_package(monkeypatch):
    import vaegan

    monkeypatch.setitem(settings.ALIASES, "vaegan-file", ("vaegan", "run.py"))
    assert Path(extractor_path("vaegan-file")) == Path(vaegan.__file__).parent / "run.py"


def test_reference_cache_dir_default_and_override(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert reference_cache_dir(metrics_cfg()) == tmp_path / "xdg" / "vaegan" / "reference"
    assert reference_cache_dir(metrics_cfg(cache_dir=str(tmp_path / "features"))) == tmp_path / "features"
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert reference_cache_dir(metrics_cfg(cache_dir="~/feat")) == tmp_path / "home" / "feat"


def test_evaluation_kwargs_carry_every_protocol_setting(tmp_path):
    m = metrics_cfg(split="valid", num_samples=123, num_reference=45, names=["fid", "kid"], seed=7, batch_size=9,
                    cache_dir=str(tmp_path), isc_splits=3, kid_subsets=4, kid_subset_size=5, prc_neighborhood=6)
    kwargs = evaluation_kwargs(m, torch.device("cpu"))
    assert kwargs == dict(split="valid", num_samples=123, num_reference=45, names=["fid", "kid"], seed=7, batch_size=9,
                          device=torch.device("cpu"), cache_dir=tmp_path, isc_splits=3, kid_subsets=4,
                          kid_subset_size=5, prc_neighborhood=6)
    assert type(kwargs["names"]) is list  # a plain list, not a ListConfig
    assert evaluation_kwargs(metrics_cfg(), torch.device("cpu"))["names"] is None


def test_evaluation_kwargs_are_evaluate_generators_arguments():
    import inspect

    from vaegan.metrics.fidelity import evaluate_generator

    parameters = inspect.signature(evaluate_generator).parameters
    assert set(evaluation_kwargs(metrics_cfg(), torch.device("cpu"))) <= set(parameters)


def test_extractor_from_loads_a_torchscript_file(tiny_extractor_file):
    ex = extractor_from(metrics_cfg(feature_extractor=str(tiny_extractor_file), input_mode="tf"), torch.device("cpu"))
    assert ex.name == "torchscript-inception" and ex.file == tiny_extractor_file
    assert ex.sha256 == sha256_file(tiny_extractor_file) and not ex.has_logits
    assert "input convention tf" in ex.resize


def test_extractor_from_a_missing_file_fails_with_the_key(tmp_path):
    with pytest.raises(MetricsError, match=r"metrics.feature_extractor='.*nope.pt': no such file"):
        extractor_from(metrics_cfg(feature_extractor=str(tmp_path / "nope.pt")), torch.device("cpu"))
