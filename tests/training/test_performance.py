"""Tests of ``vaegan.training.performance``: the options' defaults, ``apply`` on a module's networks
(memory format, compilation) and the bf16 checks. The iteration with each option is tested in
tests/training/test_step.py; here no training runs."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from vaegan.training import performance
from vaegan.training.performance import Performance, apply, bf16_is_fast, warn_if_bf16_is_emulated


def fake_module(options: Performance, width: int = 4, device: str = "cpu") -> SimpleNamespace:
    """What ``apply`` reads of a VAEGANModule: its options, device, width and networks."""
    torch.manual_seed(0)
    networks = {"generator": nn.Sequential(nn.Conv2d(3, width, 3), nn.ReLU(), nn.Conv2d(width, 3, 1)),
                "discriminator": nn.Sequential(nn.Conv2d(3, width, 3), nn.Flatten())}
    return SimpleNamespace(performance=options, device=torch.device(device), hparams=SimpleNamespace(width=width),
                           networks=networks)


def test_defaults_match_the_config_schema():
    from vaegan.config.schema import PerformanceConfig

    assert Performance() == Performance(**vars(PerformanceConfig()))
    assert (Performance().channels_last, Performance().shared_backward, Performance().batched_discriminator,
            Performance().compile) == (None, True, False, None)


@pytest.mark.parametrize("options, width, expected", [
    (Performance(), 16, torch.channels_last), (Performance(), 64, torch.contiguous_format),
    (Performance(channels_last=True), 128, torch.channels_last), (Performance(channels_last=False), 4, torch.contiguous_format),
])
def test_apply_sets_the_memory_format_of_every_network(options, width, expected):
    module = fake_module(options, width)
    before = {name: {k: v.clone() for k, v in net.state_dict().items()} for name, net in module.networks.items()}
    apply(module)
    assert module.memory_format == expected
    for name, net in module.networks.items():
        conv = net[0]
        assert conv.weight.is_contiguous(memory_format=expected), name
        after = net.state_dict()
        assert after.keys() == before[name].keys()  # checkpoints do not change
        for k, v in before[name].items():
            assert torch.equal(after[k], v), (name, k)


def test_apply_without_compile_compiles_nothing(monkeypatch):
    calls = []
    monkeypatch.setattr(nn.Module, "compile", lambda self, **kw: calls.append(kw))
    apply(fake_module(Performance()))
    assert calls == []


def test_apply_compiles_each_network_in_the_mode_without_donated_buffers(monkeypatch):
    calls = []
    monkeypatch.setattr(nn.Module, "compile", lambda self, **kw: calls.append((type(self).__name__, kw)))
    monkeypatch.setattr(torch._functorch.config, "donated_buffer", True)
    module = fake_module(Performance(compile="reduce-overhead"))
    apply(module)
    assert calls == [("Sequential", {"mode": "reduce-overhead"})] * len(module.networks)
    assert torch._functorch.config.donated_buffer is False  # several backward passes over one graph


def test_bf16_is_fast_on_cuda_follows_torch(monkeypatch):
    for supported in (True, False):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda supported=supported: supported)
        assert bf16_is_fast(torch.device("cuda")) is supported


def test_bf16_is_fast_on_cpu_is_a_bool_and_elsewhere_true():
    assert isinstance(bf16_is_fast(torch.device("cpu")), bool)
    assert bf16_is_fast(torch.device("meta")) is True


def test_the_emulated_bf16_warning_names_the_device_and_the_alternative(monkeypatch, caplog):
    monkeypatch.setattr(performance, "bf16_is_fast", lambda device: False)
    with caplog.at_level(logging.WARNING, logger="vaegan.training.performance"):
        warn_if_bf16_is_emulated("32-true", torch.device("cpu"))
        assert caplog.records == []
        warn_if_bf16_is_emulated("bf16-mixed", torch.device("cpu"))
    [record] = caplog.records
    assert record.getMessage().startswith("trainer.precision=bf16-mixed on a cpu without bf16 arithmetic")
    assert "slower than 32-true" in record.getMessage()
    monkeypatch.setattr(performance, "bf16_is_fast", lambda device: True)
    caplog.clear()
    warn_if_bf16_is_emulated("bf16-mixed", torch.device("cpu"))
    assert caplog.records == []
