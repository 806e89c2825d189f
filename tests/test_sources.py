"""Unit tests of the sources (FER2013 CSV, image folders, synthetic) without Ray.

Each source is driven the way Ray Data drives it: ``plan()`` on the driver, then
``read_batch`` on batches of the planned work items.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from datagen import (bad_files, by_id, face_pixels, fer_line, run_source, write_fer_csv,
                     write_folder_tree, write_image)
from fer_ray.data.preprocess import resize
from fer_ray.data.sources import (Fer2013CsvSource, FolderSource, SourceError, SyntheticSource,
                                  make_source)
from fer_ray.emotions import EMOTIONS


# ---------------------------------------------------------------- FER2013 CSV


def test_csv_rows_become_images_labels_and_splits(tmp_path):
    pixels = face_pixels(9)
    usages = ["Training"] * 5 + ["PublicTest"] * 2 + ["PrivateTest"] * 2
    labels = [i % 7 for i in range(9)]
    path = write_fer_csv(tmp_path / "f.csv",
                         [fer_line(l, p, u) for l, p, u in zip(labels, pixels, usages)])
    rows = run_source(Fer2013CsvSource(str(path)))
    assert list(rows["id"]) == [f"line:{n}" for n in range(2, 11)]  # header is line 1
    assert list(rows["error"]) == [""] * 9
    assert rows["label"].tolist() == labels
    assert list(rows["split"]) == ["train"] * 5 + ["val"] * 2 + ["test"] * 2
    assert rows["image"].dtype == np.uint8 and rows["image"].shape == (9, 48, 48)
    np.testing.assert_array_equal(rows["image"], pixels)
    assert set(rows["source"]) == {"fer2013-csv"} and set(rows["subject"]) == {""}


def test_csv_resizes_to_the_catalog_size(tmp_path):
    pixels = face_pixels(2)
    path = write_fer_csv(tmp_path / "f.csv", [fer_line(3, p) for p in pixels])
    rows = run_source(Fer2013CsvSource(str(path), size=32))
    assert rows["image"].shape == (2, 32, 32)
    np.testing.assert_array_equal(rows["image"][1], resize(pixels[1], 32))


def test_csv_byte_range_chunks_cover_every_line_once(tmp_path):
    pixels = face_pixels(25)
    path = write_fer_csv(tmp_path / "f.csv", [fer_line(i % 7, p) for i, p in enumerate(pixels)])
    source = Fer2013CsvSource(str(path), chunk_bytes=20_000)  # ~2-3 lines per chunk
    items = source.plan()
    assert len(items) > 5
    assert items[0]["start"] > 0 and items[-1]["end"] == path.stat().st_size
    assert all(a["end"] == b["start"] for a, b in zip(items, items[1:]))  # contiguous
    rows = run_source(source, batch_size=1)
    assert list(rows["id"]) == [f"line:{n}" for n in range(2, 27)]
    np.testing.assert_array_equal(rows["image"], pixels)


def test_csv_without_usage_column_bom_and_crlf(tmp_path):
    pixels = face_pixels(3)
    body = "\r\n".join(["emotion,pixels", *[f"{i},{' '.join(map(str, p.ravel()))}"
                                            for i, p in enumerate(pixels)]]) + "\r\n"
    path = tmp_path / "excel.csv"
    path.write_bytes(b"\xef\xbb\xbf" + body.encode())  # UTF-8 BOM, Windows line ends
    rows = run_source(Fer2013CsvSource(str(path)))
    assert list(rows["error"]) == [""] * 3
    assert list(rows["split"]) == ["train"] * 3 and rows["label"].tolist() == [0, 1, 2]
    np.testing.assert_array_equal(rows["image"], pixels)


def test_csv_columns_may_come_in_any_order(tmp_path):
    p = face_pixels(1)[0]
    path = tmp_path / "f.csv"
    path.write_text(f"Usage,pixels,emotion\nPublicTest,{' '.join(map(str, p.ravel()))},5\n")
    rows = run_source(Fer2013CsvSource(str(path)))
    assert rows["label"].tolist() == [5] and list(rows["split"]) == ["val"]


BAD_CSV_ROWS = {
    "wrong pixel count": lambda p: fer_line(0, p.ravel()[:2000]),
    "non-numeric pixels": lambda p: fer_line(0, " ".join(["12"] * 2303 + ["x7"])),
    "unknown emotion": lambda p: fer_line(7, p),
    "unknown Usage": lambda p: fer_line(0, p, "Validation2"),
    "wrong field count": lambda p: fer_line(0, p) + ",extra",
    "pixel values outside 0..255": lambda p: fer_line(0, " ".join(["300"] * 2304)),
}


@pytest.mark.parametrize("category", sorted(BAD_CSV_ROWS))
def test_csv_bad_row_is_rejected_with_reason_and_good_rows_kept(tmp_path, category):
    good = face_pixels(3)
    lines = [fer_line(1, good[0]), BAD_CSV_ROWS[category](good[1]), fer_line(2, good[2])]
    path = write_fer_csv(tmp_path / "f.csv", lines)
    rows = by_id(run_source(Fer2013CsvSource(str(path))))
    assert set(rows) == {"line:2", "line:3", "line:4"}  # nothing silently dropped
    assert rows["line:3"]["error"].startswith(category), rows["line:3"]["error"]
    assert rows["line:3"]["label"] == -1
    for line, face, label in (("line:2", good[0], 1), ("line:4", good[2], 2)):
        assert rows[line]["error"] == "" and rows[line]["label"] == label
        np.testing.assert_array_equal(rows[line]["image"], face)


@pytest.mark.parametrize("emotion", ["-1", "happy", "3.5", ""])
def test_csv_unknown_emotion_values(tmp_path, emotion):
    path = write_fer_csv(tmp_path / "f.csv", [fer_line(emotion, face_pixels(1)[0])])
    rows = run_source(Fer2013CsvSource(str(path)))
    assert rows["error"][0].startswith("unknown emotion")


def test_csv_input_level_errors(tmp_path):
    with pytest.raises(SourceError, match="not found"):
        Fer2013CsvSource(str(tmp_path / "missing.csv")).plan()
    (tmp_path / "empty.csv").write_bytes(b"")
    with pytest.raises(SourceError, match="empty"):
        Fer2013CsvSource(str(tmp_path / "empty.csv")).plan()
    (tmp_path / "header.csv").write_text("emotion,pixels,Usage\n")
    with pytest.raises(SourceError, match="no rows"):
        Fer2013CsvSource(str(tmp_path / "header.csv")).plan()
    (tmp_path / "other.csv").write_text("a,b,c\n1,2,3\n")
    with pytest.raises(SourceError, match="not a FER2013 CSV"):
        Fer2013CsvSource(str(tmp_path / "other.csv")).plan()
    with pytest.raises(SourceError, match="must be a CSV file"):
        Fer2013CsvSource(str(tmp_path)).plan()


def test_csv_pixel_value_beyond_64_bits_is_a_rejected_row(tmp_path):
    good = face_pixels(2)
    huge = " ".join(["99999999999999999999"] + ["1"] * 2303)
    path = write_fer_csv(tmp_path / "f.csv", [fer_line(1, good[0]), fer_line(0, huge), fer_line(2, good[1])])
    rows = by_id(run_source(Fer2013CsvSource(str(path))))
    assert rows["line:3"]["error"].startswith("non-numeric pixels")
    assert rows["line:2"]["error"] == rows["line:4"]["error"] == ""


def test_csv_blank_lines_are_counted_as_rejections_not_skipped(tmp_path):
    """A blank line was neither a row nor a rejection: the input's lines did not add up."""
    good = face_pixels(2)
    path = write_fer_csv(tmp_path / "f.csv", [fer_line(1, good[0]), "", "   \r", fer_line(2, good[1])])
    rows = by_id(run_source(Fer2013CsvSource(str(path), chunk_bytes=5000), batch_size=1))
    assert {k: r["error"] for k, r in rows.items()} == {
        "line:2": "", "line:3": "blank line", "line:4": "blank line", "line:5": ""}  # the final line break: no line


def test_a_binary_file_given_as_csv_is_one_short_escaped_line(tmp_path):
    """It printed ~500 characters of the file's bytes; an unknown value in a row was quoted whole too."""
    rng = np.random.default_rng(0)
    (tmp_path / "photo.csv").write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF" + rng.integers(1, 256, 5000, np.uint8).tobytes())
    (tmp_path / "one_line.csv").write_bytes(b"x" * 200_000)  # no line break at all: not read whole
    (tmp_path / "wide.csv").write_bytes(b"\xe9" * 3000 + b",pixels\n")
    for name in ("photo.csv", "one_line.csv", "wide.csv"):
        with pytest.raises(SourceError, match="is not a FER2013 CSV") as caught:
            Fer2013CsvSource(str(tmp_path / name)).plan()
        message = str(caught.value).replace(str(tmp_path), "")
        assert message.isascii() and len(message) < 250, message
    path = write_fer_csv(tmp_path / "f.csv", [fer_line(0, face_pixels(1)[0], "Usage" * 1000)])
    error = run_source(Fer2013CsvSource(str(path)))["error"][0]
    assert error.startswith("unknown Usage: 'UsageUsage") and len(error) < 150


def test_csv_with_cr_only_line_endings_is_an_input_error(tmp_path):
    (tmp_path / "mac.csv").write_bytes(b"emotion,pixels,Usage\r0,1 2,Training\r")
    with pytest.raises(SourceError, match="CR-only line endings"):
        Fer2013CsvSource(str(tmp_path / "mac.csv")).plan()


# ---------------------------------------------------------------- image folders


def test_folders_kaggle_layout_with_synonyms_and_case(tmp_path):
    counts = {"train": {"Anger": 2, "HAPPINESS": 2, "disgusted": 1, "Fearful": 1},
              "Test": {"sadness": 1, "surprised": 1, "Neutral": 1}}
    written = write_folder_tree(tmp_path, counts)
    rows = by_id(run_source(FolderSource(str(tmp_path))))
    assert set(rows) == set(written)
    expected = {"Anger": "angry", "HAPPINESS": "happy", "disgusted": "disgust", "Fearful": "fear",
                "sadness": "sad", "surprised": "surprise", "Neutral": "neutral"}
    for rel, face in written.items():
        split_folder, emotion_folder, _ = rel.split("/")
        row = rows[rel]
        assert row["error"] == ""
        assert row["label"] == EMOTIONS.index(expected[emotion_folder])
        assert row["split"] == {"train": "train", "Test": "test"}[split_folder]
        np.testing.assert_array_equal(row["image"], face)  # PNG is lossless, 48 px stays 48


@pytest.mark.parametrize("folder,split", [("training", "train"), ("validation", "val"),
                                          ("PublicTest", "val"), ("PrivateTest", "test"),
                                          ("valid", "val"), ("testing", "test")])
def test_folders_split_folder_synonyms(tmp_path, folder, split):
    write_folder_tree(tmp_path, {folder: {"happy": 1}})
    rows = run_source(FolderSource(str(tmp_path)))
    assert list(rows["split"]) == [split]


def test_folders_without_split_level_are_one_train_pool(tmp_path):
    write_folder_tree(tmp_path / "x", {"y": {"happy": 2, "sad": 1}})
    rows = run_source(FolderSource(str(tmp_path / "x" / "y")))
    assert list(rows["split"]) == ["train"] * 3
    assert sorted(rows["label"].tolist()) == [3, 3, 4]


def test_folders_every_extension_colour_and_large_images(tmp_path):
    face = face_pixels(1)[0]
    big = np.asarray(Image.fromarray(face).resize((200, 300)))  # not square, not 48
    colour = np.stack([face, face // 2, 255 - face], axis=-1)
    for ext in (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".JPG"):
        write_image(tmp_path / "train" / "happy" / f"a{ext}", face)
    write_image(tmp_path / "train" / "happy" / "big.png", big)
    write_image(tmp_path / "train" / "happy" / "colour.png", colour)
    rows = by_id(run_source(FolderSource(str(tmp_path))))
    assert all(r["error"] == "" for r in rows.values()), rows
    assert rows["train/happy/big.png"]["image"].shape == (48, 48)
    np.testing.assert_array_equal(rows["train/happy/big.png"]["image"], resize(big, 48))
    lum = np.round(colour @ np.array([0.299, 0.587, 0.114]))
    assert np.abs(rows["train/happy/colour.png"]["image"] - lum).max() <= 1
    np.testing.assert_array_equal(rows["train/happy/a.png"]["image"], face)
    assert np.abs(rows["train/happy/a.jpg"]["image"].astype(int) - face).mean() < 3  # lossy


def test_folders_bad_files_are_rejected_with_reasons_good_ones_kept(tmp_path):
    written = write_folder_tree(tmp_path, {"train": {"happy": 2}, "test": {"sad": 1}})
    face = face_pixels(1)[0]
    for name, (data, _) in bad_files(face).items():
        (tmp_path / "train" / "happy" / name).write_bytes(data)
    (tmp_path / "train" / "happy" / "notes.txt").write_text("hello")
    (tmp_path / "train" / "mystery").mkdir()
    write_image(tmp_path / "train" / "mystery" / "m.png", face)  # unknown emotion folder
    write_image(tmp_path / "train" / "loose.png", face)  # not inside an emotion folder
    (tmp_path / "README.txt").write_text("about this data")  # not inside a split folder
    rows = by_id(run_source(FolderSource(str(tmp_path))))

    for name, (_, reason) in bad_files(face).items():
        row = rows[f"train/happy/{name}"]
        assert row["error"].startswith(reason), (name, row["error"])
        assert row["label"] == -1
    assert rows["train/happy/notes.txt"]["error"] == "not an image file extension"
    assert rows["train/mystery/m.png"]["error"] == "unknown emotion folder 'mystery'"
    assert rows["train/loose.png"]["error"] == "file is not inside an emotion folder"
    assert rows["README.txt"]["error"] == "file is not inside a split folder"
    for rel, pixels in written.items():  # the good files all made it
        assert rows[rel]["error"] == ""
        np.testing.assert_array_equal(rows[rel]["image"], pixels)
    assert len(rows) == len(written) + len(bad_files(face)) + 4


def test_folders_flat_layout_rejects_an_unknown_emotion_folder_and_keeps_the_rest(tmp_path):
    write_folder_tree(tmp_path, {"flat": {"angry": 1, "happy": 2}})
    write_image(tmp_path / "flat" / "contempt" / "c.png", face_pixels(1)[0])
    rows = by_id(run_source(FolderSource(str(tmp_path / "flat"))))
    assert rows["contempt/c.png"]["error"] == "unknown emotion folder 'contempt'"
    good = [r for r in rows.values() if r["error"] == ""]
    assert len(rows) == 4 and sorted(r["label"] for r in good) == [0, 3, 3]
    assert {r["split"] for r in good} == {"train"}


def test_folders_links_and_special_files_are_listed_never_lost(tmp_path):
    """A link to a folder is followed (once, even in a cycle); a broken link and a FIFO
    become rejections instead of vanishing (or, for the FIFO, hanging the read)."""
    root, elsewhere = tmp_path / "data", tmp_path / "elsewhere"
    written = write_folder_tree(root, {"train": {"happy": 1}})
    write_image(elsewhere / "batch2" / "b.png", face_pixels(1)[0])
    happy = root / "train" / "happy"
    (happy / "batch2").symlink_to(elsewhere / "batch2", target_is_directory=True)
    (happy / "loop").symlink_to(happy, target_is_directory=True)
    (happy / "broken.png").symlink_to(tmp_path / "nowhere.png")
    os.mkfifo(happy / "pipe.png")
    rows = by_id(run_source(FolderSource(str(root))))
    assert rows["train/happy/batch2/b.png"]["error"] == ""
    assert rows["train/happy/broken.png"]["error"] == "broken symbolic link"
    assert rows["train/happy/pipe.png"]["error"] == "not a regular file"
    assert set(rows) == set(written) | {"train/happy/batch2/b.png", "train/happy/broken.png",
                                        "train/happy/pipe.png"}


def test_folders_links_to_an_ancestor_or_a_sibling_read_each_file_once_under_its_own_label(tmp_path):
    """A link that re-enters the tree (``happy/up -> ../..``) listed every file again as happy,
    test images included (5 files in, 8 rows out); a link to another emotion folder, or to a
    file already listed, must not relabel or repeat what it points at either."""
    written = write_folder_tree(tmp_path, {"train": {"happy": 2, "sad": 2}, "test": {"happy": 1}})
    happy = tmp_path / "train" / "happy"
    (happy / "up").symlink_to("../..", target_is_directory=True)
    (happy / "also_sad").symlink_to("../sad", target_is_directory=True)
    first = next(rel for rel in written if rel.startswith("train/happy/"))
    (happy / "zz_again.png").symlink_to(first.split("/")[-1])
    rows = by_id(run_source(FolderSource(str(tmp_path))))
    assert set(rows) == set(written)
    for rel in written:
        split, emotion, _ = rel.split("/")
        assert rows[rel]["split"] == split and rows[rel]["label"] == EMOTIONS.index(emotion)


def test_folders_pixel_limit_is_configurable(tmp_path):
    write_image(tmp_path / "train" / "happy" / "large.png", np.full((200, 300), 128, np.uint8))
    write_image(tmp_path / "train" / "happy" / "small.png", face_pixels(1)[0])
    rows = by_id(run_source(FolderSource(str(tmp_path), max_pixels=50_000)))
    assert rows["train/happy/large.png"]["error"] == (
        "image too large: 300x200 = 60000 pixels > limit 50000")
    assert rows["train/happy/small.png"]["error"] == ""
    rows = by_id(run_source(FolderSource(str(tmp_path), max_pixels=60_000)))
    assert rows["train/happy/large.png"]["error"] == ""


def test_folders_input_level_errors(tmp_path):
    with pytest.raises(SourceError, match="input folder not found"):
        FolderSource(str(tmp_path / "nope")).plan()
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(SourceError, match="must be a folder"):
        FolderSource(str(tmp_path / "file.txt")).plan()
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="no split or emotion folders"):
        FolderSource(str(tmp_path / "empty")).plan()
    (tmp_path / "hollow" / "train" / "happy").mkdir(parents=True)
    with pytest.raises(SourceError, match="no files found"):
        FolderSource(str(tmp_path / "hollow")).plan()
    write_folder_tree(tmp_path / "odd", {"train": {"happy": 1}, "holdout": {"sad": 1}})
    with pytest.raises(SourceError, match="unknown split folder 'holdout'"):
        FolderSource(str(tmp_path / "odd")).plan()


# ---------------------------------------------------------------- synthetic


def test_synthetic_is_seeded_balanced_and_split_by_index():
    rows = run_source(SyntheticSource(count=70, seed=3, chunk=16), batch_size=2)
    again = run_source(SyntheticSource(count=70, seed=3, chunk=7), batch_size=3)
    other = run_source(SyntheticSource(count=70, seed=4, chunk=16))
    assert rows["image"].shape == (70, 48, 48) and rows["image"].dtype == np.uint8
    assert list(rows["id"]) == [f"synthetic:{i}" for i in range(70)]
    np.testing.assert_array_equal(rows["image"], again["image"])  # chunking is irrelevant
    assert rows["label"].tolist() == again["label"].tolist()
    assert not np.array_equal(rows["image"], other["image"])
    assert np.bincount(rows["label"], minlength=7).tolist() == [10] * 7
    assert list(rows["split"]) == ["train"] * 56 + ["val"] * 7 + ["test"] * 7
    assert len({r.tobytes() for r in rows["image"]}) == 70  # no accidental duplicates


def test_synthetic_size_and_minimum_count():
    rows = run_source(SyntheticSource(count=7, size=64))
    assert rows["image"].shape == (7, 64, 64)
    with pytest.raises(SourceError, match="at least 7"):
        SyntheticSource(count=6).plan()


# ---------------------------------------------------------------- make_source


def test_make_source_names_and_input_checks(tmp_path):
    with pytest.raises(SourceError, match="unknown source 'affectnet'"):
        make_source("affectnet", str(tmp_path))
    with pytest.raises(SourceError, match="needs --input"):
        make_source("folders", None)
    assert isinstance(make_source("fer2013-csv", "x.csv", size=32), Fer2013CsvSource)
    assert make_source("synthetic", None, count=14, seed=2).count == 14
    for size in (0, 7, 1025):
        with pytest.raises(SourceError, match=f"image size {size} is outside 8..1024"):
            make_source("synthetic", None, size=size)
