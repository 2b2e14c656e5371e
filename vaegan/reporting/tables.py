"""Formatting shared by the report tables: CSV cells, ``mean ± std``, atomic CSV files."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from vaegan.utils.files import write_atomic


def cell(v) -> str:
    """CSV cell: floats with 6 significant digits, None empty."""
    return "" if v is None else f"{v:.6g}" if isinstance(v, float) else str(v)


def write_csv(header: list[str], rows: list[list], path: Path) -> Path:
    """A CSV file of ``header`` and ``rows`` (cells through ``cell``), written atomically."""
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows([header] + [[cell(v) for v in row] for row in rows])
    return write_atomic(path, lambda tmp: tmp.write_text(buf.getvalue()))


def pm(mean: float | None, std: float | None, digits: int) -> str:
    """``mean ± std``, just the mean without a std, ``—`` without a mean."""
    return "—" if mean is None else f"{mean:.{digits}f}" + ("" if std is None else f" ± {std:.{digits}f}")

