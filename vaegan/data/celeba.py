"""CelebA aligned and cropped, in torchvision's layout: its images, 40 attributes, official
partition and identities, each annotation file checked before any work starts."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from vaegan.data.errors import DataError
from vaegan.data.sources import IMAGE_EXTENSIONS, FileSource, file_list_digest
from vaegan.utils.hashing import sha256_file

CELEBA_LAYOUT = """\
  <data.root>/celeba/img_align_celeba/000001.jpg ... 202599.jpg
  <data.root>/celeba/list_attr_celeba.txt
  <data.root>/celeba/list_eval_partition.txt
  <data.root>/celeba/identity_CelebA.txt          (optional)"""
CELEBA_HOWTO = (
    "Get CelebA by hand (automatic download is unreliable: Google Drive quotas): from "
    "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html download 'Align&Cropped Images' "
    "(img_align_celeba.zip) and, from 'Anno' and 'Eval', list_attr_celeba.txt and "
    "list_eval_partition.txt; unzip into <data.root>/celeba/ and pass data.root=<data.root>."
)
CELEBA_MD5 = {  # torchvision's checksums of the official files (torchvision.datasets.CelebA.file_list)
    "list_attr_celeba.txt": "75e246fa4810816ffd6ee81facbd244c",
    "list_eval_partition.txt": "d32c9cbf5e040fd4025c592c306e6668",
    "identity_CelebA.txt": "32bd1bd63d3c78cd57e08160ec5ed1e2",
}


def read_text_file(path: Path) -> str:
    """The text of an annotation file, or a DataError saying why it is not one."""
    try:
        return path.read_bytes().decode("utf-8")
    except OSError as err:
        raise DataError(f"cannot read {path} ({err.strerror}); make it a readable file (chmod u+r)") from None
    except UnicodeDecodeError as err:
        raise DataError(f"{path} is not a text file (byte {err.start} is {err.object[err.start:err.start + 1]!r}); "
                        "use the official text file (unzip it first if it came zipped)") from None


def misplaced_celeba_root(root: Path) -> str | None:
    """A one-line fix when data.root points at celeba/ or at its image folder instead of above them."""
    if (root / "img_align_celeba").is_dir():
        if root.name == "celeba":
            return f"data=celeba: data.root={root} is the celeba folder itself; pass the folder above it: data.root={root.parent}"
        return f"data=celeba: {root} holds img_align_celeba/ directly; move it and the annotation files into {root / 'celeba'}/"
    if root.name == "img_align_celeba" and root.parent.name == "celeba":
        return f"data=celeba: data.root={root} is the image folder; pass the folder two levels up: data.root={root.parent.parent}"
    return None


def read_celeba_table(path: Path, values: int, header: bool, allowed: set[int] | None) -> tuple[list[str], dict[str, tuple[int, list[int]]]]:
    """Parse a CelebA annotation file: rows ``name v1 .. v<values>``, after a count line and a
    names line when ``header``. Returns (column names, {name: (line number, values)}); raises a
    DataError naming the first line that does not fit."""
    lines = read_text_file(path).splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    columns, first = [], 1
    if header:
        if len(lines) < 2 or not lines[0].strip().isdigit():
            raise DataError(f"{path} line 1: {lines[0][:60] if lines else ''!r} should be the number of rows; is this list_attr_celeba.txt?")
        columns = lines[1].split()
        if len(columns) != values:
            raise DataError(f"{path} line 2 names {len(columns)} attributes, expected {values}; is this list_attr_celeba.txt?")
        first = 3
    rows: dict[str, tuple[int, list[int]]] = {}
    for number, line in enumerate(lines[first - 1:], start=first):
        fields = line.split()
        try:
            row = [int(v) for v in fields[1:]]
        except ValueError:
            row = None
        if len(fields) != values + 1 or row is None or (allowed and not set(row) <= allowed):
            expect = f"a file name and {values} values" + (f" in {sorted(allowed)}" if allowed else "")
            raise DataError(f"{path} line {number}: {line[:100]!r} does not fit the format ({expect}); the file is truncated, edited or not the right file")
        if fields[0] in rows:
            raise DataError(f"{path} line {number}: {fields[0]} is listed twice (first on line {rows[fields[0]][0]})")
        rows[fields[0]] = (number, row)
    if header and int(lines[0]) != len(rows):
        raise DataError(
            f"{path} line 1 announces {int(lines[0])} rows but {len(rows)} follow (last row on line {len(lines)}); "
            "the file is truncated or edited: fix line 1 or use the complete file"
        )
    return columns, rows


class CelebASource(FileSource):
    """CelebA aligned and cropped in torchvision's layout; works with subsets (annotation files
    may list more images than are present, but every image needs its rows)."""

    name = "celeba"

    def __init__(self, root: str | Path, crop: int = 178, verify_checksums: bool = False):
        self.data_root = Path(root)
        base = self.data_root / "celeba"
        self.root, self.crop = base / "img_align_celeba", crop
        self.attr_file, self.partition_file = base / "list_attr_celeba.txt", base / "list_eval_partition.txt"
        self.identity_file = base / "identity_CelebA.txt"
        missing = [p for p in (self.root, self.attr_file, self.partition_file) if not p.exists()]
        if missing:
            raise DataError(
                misplaced_celeba_root(self.data_root)
                or f"data=celeba: {missing[0]} not found (data.root={root}).\nExpected layout:\n{CELEBA_LAYOUT}\n{CELEBA_HOWTO}"
            )
        try:
            self.files = sorted(e.name for e in os.scandir(self.root) if e.name.lower().endswith(IMAGE_EXTENSIONS))
        except OSError as err:
            raise DataError(f"data=celeba: cannot list {self.root} ({err.strerror}); make it a readable folder (chmod u+rx)") from None
        if not self.files:
            raise DataError(f"data=celeba: {self.root} holds no images.\nExpected layout:\n{CELEBA_LAYOUT}\n{CELEBA_HOWTO}")
        if verify_checksums:
            self.verify_checksums()

    def annotation_files(self) -> list[Path]:
        return [p for p in (self.attr_file, self.partition_file, self.identity_file) if p.exists()]

    def verify_checksums(self) -> None:
        """Compare the annotation files with the official MD5s (the images have no per-file checksum)."""
        for path in self.annotation_files():
            digest = hashlib.md5(path.read_bytes()).hexdigest()
            if digest != CELEBA_MD5[path.name]:
                raise DataError(
                    f"{path}: MD5 {digest} differs from the official {CELEBA_MD5[path.name]} (a subset or an edited copy?). "
                    "Set data.verify_checksums=false to use it anyway."
                )

    def fingerprint(self) -> dict:
        return {"images": file_list_digest(self.root, self.files), "count": len(self.files),
                **{p.name: sha256_file(p) for p in self.annotation_files()}}

    def arrays(self) -> dict[str, np.ndarray]:
        names, attrs = read_celeba_table(self.attr_file, 40, header=True, allowed={-1, 1})
        _, parts = read_celeba_table(self.partition_file, 1, header=False, allowed={0, 1, 2})
        tables = {"attrs": (self.attr_file, attrs), "partition": (self.partition_file, parts)}
        if self.identity_file.exists():
            tables["identity"] = (self.identity_file, read_celeba_table(self.identity_file, 1, header=False, allowed=None)[1])
        out: dict[str, np.ndarray] = {"filenames": np.array(self.files), "attr_names": np.array(names)}
        for key, (path, rows) in tables.items():
            lacking = [f for f in self.files if f not in rows]
            if lacking:
                raise DataError(
                    f"{self.root / lacking[0]} has no row in {path} ({len(lacking)} of the {len(self.files)} images lack one); "
                    f"use the {path.name} that belongs to these images"
                )
            column = np.array([rows[f][1] for f in self.files])
            out[key] = column if key == "attrs" else column[:, 0]
        out["attrs"] = out["attrs"].astype(np.int8)
        out["partition"] = out["partition"].astype(np.int8)
        if "identity" in out:
            out["identity"] = out["identity"].astype(np.int32)
        if len(attrs) > len(self.files):
            print(f"celeba: {len(self.files):,} of the {len(attrs):,} images listed in {self.attr_file.name} are present; using those")
        return out


# --------------------------------------------------------------------------------------- folders
