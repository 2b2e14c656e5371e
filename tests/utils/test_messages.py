"""Tests of ``vaegan.utils.messages.final_line``: the last line of run.log and of stderr."""

from __future__ import annotations

import logging

import pytest

from vaegan.utils.messages import final_line


@pytest.fixture
def run_log(tmp_path):
    """A FileHandler on the root logger, as Hydra's run.log is; removed afterwards."""
    path = tmp_path / "run.log"
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("[%(levelname)s] %(message)s"))
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield path
    root.removeHandler(handler)
    root.setLevel(level)
    handler.close()


def test_final_line_ends_run_log_and_prints_to_stderr(run_log, capsys):
    logging.getLogger("vaegan.test").info("training started")
    final_line("Config error: data.batch_size=0: must be >= 1")
    lines = run_log.read_text().splitlines()
    assert lines == ["[INFO] training started", "Config error: data.batch_size=0: must be >= 1"]
    captured = capsys.readouterr()
    assert captured.err == "Config error: data.batch_size=0: must be >= 1\n" and captured.out == ""


def test_final_line_without_console_only_writes_the_log(run_log, capsys):
    final_line("Interrupted: stopped by SIGTERM", console=False)
    assert run_log.read_text() == "Interrupted: stopped by SIGTERM\n"
    assert capsys.readouterr().err == ""


def test_final_line_comes_after_buffered_log_records(run_log):
    """The handler is flushed first, so nothing logged before the line lands after it."""
    for i in range(50):
        logging.getLogger("vaegan.test").info(f"record {i}")
    final_line("the end", console=False)
    lines = run_log.read_text().splitlines()
    assert lines[-1] == "the end" and lines[-2] == "[INFO] record 49" and len(lines) == 51


def test_final_line_without_a_log_file_only_prints(capsys, tmp_path, monkeypatch):
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [logging.StreamHandler()])  # no FileHandler (pytest adds one)
    final_line("Data error: missing")
    assert capsys.readouterr().err == "Data error: missing\n"
    assert list(tmp_path.iterdir()) == []
