"""vaegan.data.sources: what each source lists, reads and returns, and the message of every bad
input (layouts, annotation files, npz files, CIFAR-10 batches, offline downloads)."""

import hashlib
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import SHARED_CELEBA, celeba_jpegs, make_celeba_layout, require_shared, write_cifar10_batches
from tests.data.test_cache_writes import needs_permissions
from vaegan.data import DataError
from vaegan.data import celeba
from vaegan.data.celeba import CelebASource
from vaegan.data.sources import CIFAR10Source, FolderSource, NpzSource

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def write_lines(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"".join(lines))


def attr_file(root: Path) -> Path:
    return root / "celeba" / "list_attr_celeba.txt"


def partition_file(root: Path) -> Path:
    return root / "celeba" / "list_eval_partition.txt"


# ------------------------------------------------------------------------------------ CelebA
def test_celeba_subset_annotations_use_the_present_images(celeba_root, celeba_npz, capsys):
    """The annotation files list 4,020 images but only 200 are present: the 200 are used."""
    source = CelebASource(celeba_root)
    names = [p.name for p in celeba_jpegs()]
    assert len(source) == 200 and source.files == names
    assert source.describe(0) == str(celeba_root / "celeba" / "img_align_celeba" / names[0])
    arrays = source.arrays()
    assert "200 of the 4,020 images listed in list_attr_celeba.txt are present" in capsys.readouterr().out

    npz = celeba_npz(64)
    rows = [npz["row"][name] for name in names]
    assert arrays["filenames"].tolist() == names
    assert arrays["attrs"].dtype == np.int8 and arrays["attrs"].shape == (200, 40)
    assert np.array_equal(arrays["attrs"], npz["attrs"][rows])
    assert arrays["partition"].dtype == np.int8 and np.array_equal(arrays["partition"], npz["partition"][rows])
    assert arrays["identity"].dtype == np.int32 and np.array_equal(arrays["identity"], npz["identity"][rows])
    assert arrays["attr_names"].tolist() == npz["attr_names"].tolist()
    assert set(np.unique(arrays["partition"]).tolist()) == {0, 1, 2}


def test_celeba_annotations_listing_exactly_the_present_images(tmp_path, celeba_root, capsys):
    exact = make_celeba_layout(tmp_path / "exact", exact=True)
    lines = lines_of(attr_file(exact))
    assert lines[0] == b"200\r\n" and len(lines) == 202 and all(line.endswith(b"\r\n") for line in lines)
    assert len(lines_of(partition_file(exact))) == 200
    got = CelebASource(exact).arrays()
    assert "are present" not in capsys.readouterr().out  # nothing left out, nothing to say
    full = CelebASource(celeba_root).arrays()
    assert sorted(got) == sorted(full)
    for key in full:
        assert np.array_equal(got[key], full[key]), key


def test_celeba_identity_file_is_optional(tmp_path):
    root = make_celeba_layout(tmp_path / "data", identity=False)
    arrays = CelebASource(root).arrays()
    assert "identity" not in arrays and arrays["attrs"].shape == (200, 40)
    assert "identity_CelebA.txt" not in CelebASource(root).fingerprint()


def test_celeba_files_with_lf_line_endings_work(celeba_root):
    for path in (attr_file(celeba_root), partition_file(celeba_root)):
        path.write_bytes(path.read_bytes().replace(b"\r\n", b"\n"))
    assert CelebASource(celeba_root).arrays()["attrs"].shape == (200, 40)


def layout_message(path: Path) -> list[str]:
    """The parts every missing-file message must have: the path, the layout and how to get CelebA."""
    return [re.escape(f"data=celeba: {path} not found"), "Expected layout:", re.escape("<data.root>/celeba/list_attr_celeba.txt"),
            re.escape("https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html"), "img_align_celeba.zip"]


def assert_message(err: pytest.ExceptionInfo, parts: list[str]) -> None:
    for part in parts:
        assert re.search(part, str(err.value)), f"{part!r} not in {str(err.value)!r}"


def test_missing_root_names_the_expected_path(tmp_path):
    with pytest.raises(DataError) as err:
        CelebASource(tmp_path / "nowhere")
    assert_message(err, layout_message(tmp_path / "nowhere" / "celeba" / "img_align_celeba"))


def test_missing_image_folder_names_it(celeba_root):
    folder = celeba_root / "celeba" / "img_align_celeba"
    folder.rename(celeba_root / "celeba" / "img_align_celeba_renamed")
    with pytest.raises(DataError) as err:
        CelebASource(celeba_root)
    assert_message(err, layout_message(folder))


def test_missing_attribute_file_names_it(celeba_root):
    attr_file(celeba_root).unlink()
    with pytest.raises(DataError) as err:
        CelebASource(celeba_root)
    assert_message(err, layout_message(attr_file(celeba_root)))


def test_missing_partition_file_names_it(celeba_root):
    partition_file(celeba_root).unlink()
    with pytest.raises(DataError) as err:
        CelebASource(celeba_root)
    assert_message(err, layout_message(partition_file(celeba_root)))


def test_root_at_the_celeba_folder_names_the_right_root(celeba_root):
    base = celeba_root / "celeba"
    with pytest.raises(DataError) as err:
        CelebASource(base)
    assert str(err.value) == f"data=celeba: data.root={base} is the celeba folder itself; pass the folder above it: data.root={celeba_root}"
    with pytest.raises(DataError) as err:
        CelebASource(base / "img_align_celeba")
    assert str(err.value) == (f"data=celeba: data.root={base / 'img_align_celeba'} is the image folder; "
                              f"pass the folder two levels up: data.root={celeba_root}")
    renamed = celeba_root / "CelebA"
    base.rename(renamed)
    with pytest.raises(DataError) as err:
        CelebASource(renamed)
    assert str(err.value) == f"data=celeba: {renamed} holds img_align_celeba/ directly; move it and the annotation files into {renamed / 'celeba'}/"


def test_attribute_file_that_is_not_text(celeba_root):
    with zipfile.ZipFile(celeba_root / "list_attr_celeba.zip", "w", zipfile.ZIP_DEFLATED) as z:
        z.write(attr_file(celeba_root), "list_attr_celeba.txt")
    (celeba_root / "list_attr_celeba.zip").replace(attr_file(celeba_root))  # the zip, saved under the text file's name
    with pytest.raises(DataError) as err:
        CelebASource(celeba_root).arrays()
    assert re.fullmatch(re.escape(f"{attr_file(celeba_root)} is not a text file (byte ") + r"\d+ is b'.+'"
                        + re.escape("); use the official text file (unzip it first if it came zipped)"), str(err.value))


def test_empty_image_folder(celeba_root):
    for jpg in (celeba_root / "celeba" / "img_align_celeba").iterdir():
        jpg.unlink()
    (celeba_root / "celeba" / "img_align_celeba" / "readme.txt").write_text("not an image")
    with pytest.raises(DataError, match=r"img_align_celeba holds no images\.\nExpected layout:"):
        CelebASource(celeba_root)


def test_attribute_row_with_39_values_names_the_line(celeba_root):
    lines = lines_of(attr_file(celeba_root))
    fields = lines[9].split()
    lines[9] = b" ".join(fields[:-1]) + b"\r\n"  # line 10: a name and 39 values
    write_lines(attr_file(celeba_root), lines)
    with pytest.raises(DataError) as err:
        CelebASource(celeba_root).arrays()
    assert_message(err, [re.escape(f"{attr_file(celeba_root)} line 10: '{fields[0].decode()}"),
                         re.escape("does not fit the format (a file name and 40 values in [-1, 1])")])


def test_attribute_value_outside_the_encoding_names_the_line(celeba_root):
    lines = lines_of(attr_file(celeba_root))
    lines[20] = lines[20].replace(b" 1", b" 0", 1)
    write_lines(attr_file(celeba_root), lines)
    with pytest.raises(DataError, match="list_attr_celeba.txt line 21: .* does not fit the format"):
        CelebASource(celeba_root).arrays()


def test_truncated_attribute_file_count_does_not_match(celeba_root):
    lines = lines_of(attr_file(celeba_root))
    write_lines(attr_file(celeba_root), lines[:-20])  # 20 complete rows lost
    with pytest.raises(DataError) as err:
        CelebASource(celeba_root).arrays()
    assert_message(err, [re.escape(f"{attr_file(celeba_root)} line 1 announces 4020 rows but 4000 follow (last row on line 4002)"),
                         "truncated or edited"])


def test_attribute_file_cut_mid_row_names_the_last_line(celeba_root):
    data = attr_file(celeba_root).read_bytes()
    cut = data[: len(data) // 2]
    assert not cut.endswith(b"\n")
    attr_file(celeba_root).write_bytes(cut)
    last_line = cut.count(b"\n") + 1
    with pytest.raises(DataError, match=rf"list_attr_celeba.txt line {last_line}: .* does not fit the format"):
        CelebASource(celeba_root).arrays()


def test_attribute_file_without_count_line(celeba_root):
    """As in copies that dropped the official first line."""
    write_lines(attr_file(celeba_root), lines_of(attr_file(celeba_root))[1:])
    with pytest.raises(DataError, match=r"line 1: '5_o_Clock_Shadow.*should be the number of rows; is this list_attr_celeba.txt\?"):
        CelebASource(celeba_root).arrays()


def test_duplicated_attribute_row(celeba_root):
    lines = lines_of(attr_file(celeba_root))
    name = lines[2].split()[0].decode()
    write_lines(attr_file(celeba_root), lines + [lines[2]])
    with pytest.raises(DataError, match=re.escape(f"line 4023: {name} is listed twice (first on line 3)")):
        CelebASource(celeba_root).arrays()


def test_image_without_attribute_row_names_the_image(celeba_root):
    present = celeba_jpegs()[5].name
    lines = lines_of(attr_file(celeba_root))
    kept = [line for line in lines[2:] if not line.startswith(present.encode())]
    assert len(kept) == len(lines) - 3
    write_lines(attr_file(celeba_root), [f"{len(kept)}\r\n".encode(), lines[1], *kept])
    with pytest.raises(DataError) as err:
        CelebASource(celeba_root).arrays()
    image = celeba_root / "celeba" / "img_align_celeba" / present
    assert_message(err, [re.escape(f"{image} has no row in {attr_file(celeba_root)} (1 of the 200 images lack one)")])


def test_image_without_partition_row_names_the_image(celeba_root):
    present = celeba_jpegs()[-1].name
    lines = [line for line in lines_of(partition_file(celeba_root)) if not line.startswith(present.encode())]
    write_lines(partition_file(celeba_root), lines)
    with pytest.raises(DataError, match=re.escape(f"{present} has no row in {partition_file(celeba_root)}")):
        CelebASource(celeba_root).arrays()


def test_partition_value_7_names_the_line(celeba_root):
    lines = lines_of(partition_file(celeba_root))
    number = 42
    name = lines[number - 1].split()[0].decode()
    lines[number - 1] = f"{name} 7\r\n".encode()
    write_lines(partition_file(celeba_root), lines)
    with pytest.raises(DataError) as err:
        CelebASource(celeba_root).arrays()
    assert_message(err, [re.escape(f"{partition_file(celeba_root)} line {number}: '{name} 7' does not fit the format"),
                         re.escape("in [0, 1, 2]")])


def test_verify_checksums_rejects_the_subset_files(celeba_root, monkeypatch):
    digest = hashlib.md5(attr_file(celeba_root).read_bytes()).hexdigest()
    with pytest.raises(DataError) as err:
        CelebASource(celeba_root, verify_checksums=True)
    assert_message(err, [re.escape(f"{attr_file(celeba_root)}: MD5 {digest} differs from the official 75e246fa4810816ffd6ee81facbd244c"),
                         "data.verify_checksums=false"])
    CelebASource(celeba_root, verify_checksums=False)  # the default reads them
    # files whose MD5s are the expected ones pass
    for path in (attr_file(celeba_root), partition_file(celeba_root), celeba_root / "celeba" / "identity_CelebA.txt"):
        monkeypatch.setitem(celeba.CELEBA_MD5, path.name, hashlib.md5(path.read_bytes()).hexdigest())
    assert len(CelebASource(celeba_root, verify_checksums=True)) == 200


def test_celeba_fingerprint_follows_images_and_annotations(celeba_root):
    before = CelebASource(celeba_root).fingerprint()
    assert before["count"] == 200 and set(before) >= {"images", "list_attr_celeba.txt", "list_eval_partition.txt"}
    assert CelebASource(celeba_root).fingerprint() == before
    (celeba_root / "celeba" / "img_align_celeba" / celeba_jpegs()[0].name).unlink()
    removed = CelebASource(celeba_root).fingerprint()
    assert removed["images"] != before["images"] and removed["count"] == 199


# ------------------------------------------------------------------------------------ folders
def test_folder_labels_and_pixels_match_the_cifar10_arrays():
    folder = require_shared("cifar10", "images", "test")
    with np.load(require_shared("cifar10", "cifar10_test_10k.npz")) as f:
        x, y, class_names = f["x"], f["y"], f["class_names"].tolist()
    source = FolderSource(folder)
    assert len(source) == 200
    arrays = source.arrays()
    assert arrays["class_names"].tolist() == class_names  # sorted folder names = the standard order
    for i, name in enumerate(source.files):
        cls, file = Path(name).parts
        row = class_names.index(cls) * 1000 + int(Path(file).stem)
        assert arrays["labels"][i] == class_names.index(cls) == y[row]
        assert np.array_equal(source.read(i, 32, 3), x[row]), name


def test_folder_without_class_subfolders_has_no_labels(tmp_path):
    jpgs = celeba_jpegs()[:3]
    (tmp_path / "sub").mkdir()
    for i, jpg in enumerate(jpgs):
        (tmp_path / ("sub" if i == 0 else "") / jpg.name).write_bytes(jpg.read_bytes())
    (tmp_path / "notes.txt").write_text("ignored")
    source = FolderSource(tmp_path)
    assert source.files == sorted([f"sub/{jpgs[0].name}", jpgs[1].name, jpgs[2].name])
    assert "labels" not in source.arrays()  # an image at the top level: no classes
    assert source.read(0, 16, 3).shape == (16, 16, 3) and source.read(0, 16, 1).shape == (16, 16, 1)


def test_folder_root_that_is_a_file(tmp_path):
    (tmp_path / "faces.npz").write_bytes(b"PK")
    with pytest.raises(DataError) as err:
        FolderSource(tmp_path / "faces.npz")
    assert str(err.value).startswith(f"data=folder: data.root={tmp_path / 'faces.npz'} is a file, not a folder "
                                     "(for an .npz file use data=npz); point data.root at a folder of images")


@needs_permissions
def test_unreadable_subfolder_is_an_error_not_silently_left_out(tmp_path):
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "1.jpg").write_bytes(celeba_jpegs()[0].read_bytes())
    (tmp_path / "b").chmod(0)
    try:
        with pytest.raises(DataError) as err:
            FolderSource(tmp_path)
    finally:
        (tmp_path / "b").chmod(0o755)
    assert str(err.value) == (f"data=folder: cannot list {tmp_path / 'b'} (Permission denied); make it readable "
                              f"(chmod -R u+rX {tmp_path / 'b'}) or move it out of data.root")


def test_symlink_loops_are_not_followed(tmp_path):
    (tmp_path / "faces").mkdir()
    (tmp_path / "faces" / "1.jpg").write_bytes(celeba_jpegs()[0].read_bytes())
    (tmp_path / "faces" / "up").symlink_to("..")  # a folder loop
    (tmp_path / "self.jpg").symlink_to("self.jpg")  # a file loop
    (tmp_path / "gone.jpg").symlink_to("nowhere.jpg")
    assert FolderSource(tmp_path).files == ["faces/1.jpg"]


def test_folder_errors(tmp_path):
    with pytest.raises(DataError, match=re.escape(f"data=folder: data.root={tmp_path / 'missing'} is not a directory")):
        FolderSource(tmp_path / "missing")
    (tmp_path / "empty" / "deeper").mkdir(parents=True)
    (tmp_path / "empty" / "deeper" / "a.txt").write_text("x")
    with pytest.raises(DataError, match=re.escape(f"data=folder: no images (.jpg, .jpeg, .png, .webp, .bmp) under {tmp_path / 'empty'}")):
        FolderSource(tmp_path / "empty")


# ------------------------------------------------------------------------------------ npz
def test_npz_source_reads_arrays(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(5), partition=np.array([0, 0, 1, 2, 0], np.int8),
             class_names=np.array(list("abcde")))
    source = NpzSource(tmp_path / "d.npz")
    assert len(source) == 5 and source.location() == str((tmp_path / "d.npz").resolve())
    arrays = source.arrays()
    assert arrays["labels"].tolist() == [0, 1, 2, 3, 4] and arrays["partition"].tolist() == [0, 0, 1, 2, 0]
    assert arrays["class_names"].tolist() == list("abcde")
    assert np.array_equal(source.read(3, 8, 3), x[3])
    assert source.read(3, 4, 3).shape == (4, 4, 3)


@pytest.mark.parametrize("arrays, message", [
    (dict(y=np.zeros(2)), "has no array x (keys: ['y']); it needs x: uint8 (N, H, W, C) with C = 1 or 3"),
    (dict(x=np.zeros((2, 4, 4, 3), np.float32)), "has x float32 (2, 4, 4, 3)"),
    (dict(x=np.zeros((2, 4, 4), np.uint8)), "has x uint8 (2, 4, 4)"),
    (dict(x=np.zeros((2, 4, 4, 2), np.uint8)), "has x uint8 (2, 4, 4, 2)"),
    (dict(x=np.zeros((2, 4, 4, 3), np.uint8), attrs=np.ones((3, 40), np.int8)), "attrs has 3 rows but x has 2 images"),
    (dict(x=np.zeros((2, 4, 4, 3), np.uint8), y=np.ones(1)), "y has 1 rows but x has 2 images"),
    (dict(x=np.zeros((2, 4, 4, 3), np.uint8), partition=np.array([0, 3])), "partition must hold 0 (train), 1 (valid) or 2 (test)"),
])
def test_bad_npz_contents(tmp_path, arrays, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError, match=re.escape(message)) as err:
        NpzSource(path).arrays()
    assert str(path) in str(err.value)


def test_npz_without_images(tmp_path):
    from vaegan.data import NpzDataModule

    path = tmp_path / "empty.npz"
    np.savez(path, x=np.zeros((0, 8, 8, 3), np.uint8))
    dm = NpzDataModule(root=str(path), cache_dir=str(tmp_path / "cache"), image_size=8, batch_size=2, cache_workers=1)
    with pytest.raises(DataError) as err:
        dm.setup()
    assert str(path) in str(err.value)


def test_npz_that_is_not_a_complete_zip(tmp_path):
    good = tmp_path / "good.npz"
    np.savez_compressed(good, x=np.zeros((50, 16, 16, 3), np.uint8))
    (tmp_path / "truncated.npz").write_bytes(good.read_bytes()[:-100])
    with pytest.raises(DataError, match=re.escape(f"data=npz: cannot read {tmp_path / 'truncated.npz'} (") + ".*is it a complete numpy.savez file"):
        len(NpzSource(tmp_path / "truncated.npz"))
    with pytest.raises(DataError, match="is not a file"):
        NpzSource(tmp_path)


FIX_NPZ = "; write the images with numpy.savez(file, x=images) and point data.root at that file"


@pytest.mark.parametrize("content, says", [
    (b"x,y\n1,2\n", "is not an .npz archive: it starts with b'x,y\\n1,2\\n' (8 bytes)" + FIX_NPZ),
    (b"", "is not an .npz archive: it is empty" + FIX_NPZ),
    (b"\x80\x04\x95" + bytes(40), "is not an .npz archive: it starts with b'\\x80\\x04\\x95" + "\\x00" * 13 + "' (43 bytes)" + FIX_NPZ),
    ("npy", "is a .npy file (one array), not an .npz archive" + FIX_NPZ),
], ids=["text", "empty", "pickle", "npy"])
def test_file_that_is_not_an_npz_archive_says_what_it_is(tmp_path, content, says):
    path = tmp_path / "data.npz"
    if content == "npy":
        with open(path, "wb") as f:
            np.save(f, np.zeros((2, 4, 4, 3), np.uint8))
    else:
        path.write_bytes(content)
    with pytest.raises(DataError) as err:
        len(NpzSource(path))
    assert str(err.value) == f"data=npz: {path} {says}"


# ------------------------------------------------------------------------------------ CIFAR-10
def test_cifar10_missing_files_say_how_to_get_them(tmp_path):
    with pytest.raises(DataError) as err:
        CIFAR10Source(tmp_path)
    assert_message(err, [re.escape(f"data=cifar10: {tmp_path / 'cifar-10-batches-py' / 'data_batch_1'} not found"),
                         "Expected layout:", "data.download=true", re.escape(CIFAR10_URL)])
    write_cifar10_batches(tmp_path, np.zeros((6, 32, 32, 3), np.uint8), np.zeros(6, int), ["a"], (1,) * 6)
    (tmp_path / "cifar-10-batches-py" / "test_batch").unlink()
    with pytest.raises(DataError, match="test_batch not found"):
        CIFAR10Source(tmp_path)


def test_cifar10_bad_batches(tmp_path):
    write_cifar10_batches(tmp_path, np.zeros((6, 32, 32, 3), np.uint8), np.zeros(6, int), ["a"], (1,) * 6)
    folder = tmp_path / "cifar-10-batches-py"
    with pytest.warns(UserWarning, match="not the official CIFAR-10 files"):
        assert CIFAR10Source(tmp_path).arrays()["labels"].tolist() == [0] * 6
    with pytest.raises(DataError, match="differ from the official MD5s; set data.verify_checksums=false"):
        CIFAR10Source(tmp_path, verify_checksums=True).arrays()
    (folder / "data_batch_3").write_bytes(b"garbage")
    with pytest.warns(UserWarning), pytest.raises(DataError, match=re.escape(f"data=cifar10: cannot read {folder / 'data_batch_3'}")):
        CIFAR10Source(tmp_path).arrays()
    from tests.conftest import write_py2_pickle
    write_py2_pickle(folder / "data_batch_3", {"data": np.zeros((2, 1024), np.uint8), "labels": [0, 0]})
    with pytest.warns(UserWarning), pytest.raises(DataError, match=r"data_batch_3 is not a CIFAR-10 batch \(data uint8 \(2, 1024\), 2 labels\)"):
        CIFAR10Source(tmp_path).arrays()


def test_shared_celeba_files_are_where_the_tests_expect_them(shared_data):
    """The subset files are not the official ones (their MD5s differ), as PROVENANCE.md says."""
    attr = shared_data / "celeba" / "list_attr_celeba_subset.txt"
    assert hashlib.md5(attr.read_bytes()).hexdigest() != celeba.CELEBA_MD5["list_attr_celeba.txt"]
    assert attr.read_bytes().startswith(b"4020\r\n")
    assert len(celeba_jpegs()) == 200 and SHARED_CELEBA.is_dir()
