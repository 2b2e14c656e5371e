"""Tests of ``vaegan.metrics.protocol``: what identifies a result's protocol and its reference features."""

from __future__ import annotations

import dataclasses

import pytest

from vaegan.metrics.protocol import GENERATED_ONLY, Protocol
from vaegan.utils.hashing import digest

FIELDS = dict(dataset="celeba", data_id="celeba-64px-3c-0123456789ab", split="train", num_reference=50000, image_size=64,
              channels=3, num_samples=50000, extractor="inception-v3-compat", extractor_file="/w/pt_inception.pth",
              extractor_sha256="6726825d" + "0" * 56, resize="bilinear", metrics="is,fid,kid", seed=0, isc_splits=10,
              kid_subsets=100, kid_subset_size=1000, prc_neighborhood=3, torch_fidelity="0.3.0")


def protocol(**changes) -> Protocol:
    return Protocol(**{**FIELDS, **changes})


def test_defaults_describe_the_standard_evaluation():
    p = protocol()
    assert (p.model_mode, p.weights, p.precision, p.train_precision) == ("eval", "raw", "fp32", "32-true")
    assert p.sample_quantization.startswith("generated images rounded to uint8")


def test_key_is_the_digest_of_every_field():
    p = protocol()
    assert p.as_dict() == {**FIELDS, "model_mode": "eval", "weights": "raw", "precision": "fp32",
                           "train_precision": "32-true", "sample_quantization": p.sample_quantization}
    assert p.key() == digest(p.as_dict())[:16]
    assert len(p.key()) == 16 and int(p.key(), 16) >= 0


def test_reference_key_leaves_out_exactly_the_generated_only_fields():
    p = protocol()
    reference = {k: v for k, v in p.as_dict().items() if k not in GENERATED_ONLY}
    assert p.reference_key() == digest(reference)[:16]
    assert set(reference) == {"dataset", "data_id", "split", "num_reference", "image_size", "channels", "extractor",
                              "extractor_file", "extractor_sha256", "resize", "seed", "torch_fidelity"}
    assert p.reference_key() != p.key()


def test_in_training_and_final_evaluations_share_reference_features_but_not_keys():
    final, in_training = protocol(), protocol(num_samples=5000, metrics="fid,kid", kid_subset_size=500, weights="ema")
    assert final.reference_key() == in_training.reference_key()
    assert final.key() != in_training.key()
    other_reference = protocol(num_reference=10000)
    assert other_reference.reference_key() != final.reference_key()


def test_keys_survive_a_round_trip_through_a_dict():
    p = protocol(weights="ema", precision="bf16")
    q = Protocol(**p.as_dict())
    assert q == p and q.key() == p.key() and q.reference_key() == p.reference_key()


def test_lines_list_every_field_in_order():
    p = protocol()
    lines = p.lines()
    assert lines[:3] == ["dataset: celeba", "data_id: celeba-64px-3c-0123456789ab", "split: train"]
    assert lines[-5:] == ["model_mode: eval", "weights: raw", "precision: fp32", "train_precision: 32-true",
                          f"sample_quantization: {p.sample_quantization}"]
    assert [line.split(":")[0] for line in lines] == [f.name for f in dataclasses.fields(Protocol)]


def test_a_protocol_is_immutable_and_hashable():
    p = protocol()
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.num_samples = 10
    assert {p: 1}[protocol()] == 1
