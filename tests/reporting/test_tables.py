"""Tests of ``vaegan.reporting.tables``: CSV cells, ``mean ± std`` and atomic CSV files."""

from __future__ import annotations

import csv

import pytest

from vaegan.reporting.tables import cell, pm, write_csv


@pytest.mark.parametrize("v, text", [(None, ""), (0.1234567891, "0.123457"), (1234567.0, "1.23457e+06"), (2.0, "2"),
                                     (float("nan"), "nan"), (3, "3"), (True, "True"), ("began", "began")])
def test_cell(v, text):
    assert cell(v) == text


@pytest.mark.parametrize("mean, std, digits, text", [(None, None, 2, "—"), (None, 0.1, 2, "—"), (6.123, None, 2, "6.12"),
                                                     (6.126, 0.04, 2, "6.13 ± 0.04"), (41.25, 1.5, 1, "41.2 ± 1.5"),
                                                     (0.0312, 0.0021, 3, "0.031 ± 0.002")])
def test_pm(mean, std, digits, text):
    assert pm(mean, std, digits) == text


def test_write_csv_writes_cells_and_returns_the_path(tmp_path):
    path = write_csv(["variant", "fid", "n"], [["began", 41.23456789, 2], ["vae", None, 1]], tmp_path / "sub" / "t.csv")
    assert path == tmp_path / "sub" / "t.csv"
    assert path.read_text() == "variant,fid,n\nbegan,41.2346,2\nvae,,1\n"  # \n line ends, not csv's \r\n
    with path.open(newline="") as f:
        assert list(csv.reader(f)) == [["variant", "fid", "n"], ["began", "41.2346", "2"], ["vae", "", "1"]]
    assert sorted(p.name for p in path.parent.iterdir()) == ["t.csv"]  # no temporary file left


def test_write_csv_quotes_cells_with_commas(tmp_path):
    path = write_csv(["configuration"], [["model.alpha=0.3,seed=1"]], tmp_path / "t.csv")
    assert path.read_text() == 'configuration\n"model.alpha=0.3,seed=1"\n'


def test_write_csv_replaces_an_old_table(tmp_path):
    (tmp_path / "t.csv").write_text("old\n")
    write_csv(["a"], [[1.5]], tmp_path / "t.csv")
    assert (tmp_path / "t.csv").read_text() == "a\n1.5\n"
