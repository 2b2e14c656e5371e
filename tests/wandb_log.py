"""Reading an offline W&B run back: its ``.wandb`` transaction log, as W&B writes it, without W&B's
private readers."""

from __future__ import annotations

import json
import struct
from pathlib import Path

from wandb.proto import wandb_internal_pb2


def wandb_records(path: Path):
    """The protobuf records of a ``.wandb`` file (W&B's LevelDB-style log: a 7-byte header, then
    32 KiB blocks of chunks with a 7-byte header: CRC, length, type FULL/FIRST/MIDDLE/LAST)."""
    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B", f"{path} is not a W&B transaction log"
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        if (left := block - pos % block) < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:
            pos += left
            continue
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


def offline_runs(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "wandb").glob("offline-run-*"))


def history(run: Path) -> list[dict]:
    """Every ``wandb.log`` call of an offline run, as {key: value}."""
    (log,) = run.glob("run-*.wandb")
    return [{item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in r.history.item}
            for r in wandb_records(log) if r.WhichOneof("record_type") == "history"]


def run_record(run: Path):
    (log,) = run.glob("run-*.wandb")
    return next(r.run for r in wandb_records(log) if r.WhichOneof("record_type") == "run")


def config_of(run: Path) -> dict:
    (log,) = run.glob("run-*.wandb")
    config = {}
    for r in wandb_records(log):
        if (kind := r.WhichOneof("record_type")) in ("run", "config"):
            items = r.run.config.update if kind == "run" else r.config.update
            config.update({item.key: json.loads(item.value_json) for item in items if item.key})
    return config


def summary_keys(run: Path) -> set[str]:
    """Every path of the run's summary (nested values as ``key.min``), as W&B's run table names them."""
    (log,) = run.glob("run-*.wandb")
    keys: set[str] = set()
    for r in wandb_records(log):
        if r.WhichOneof("record_type") == "summary":
            for item in r.summary.update:
                key, value = item.key or "/".join(item.nested_key), json.loads(item.value_json)
                keys |= {f"{key}.{sub}" for sub in value} if isinstance(value, dict) else {key}
    return keys
