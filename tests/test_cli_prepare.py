"""`fer-ray prepare` from the command line: input-level problems are one line and exit 2."""

from __future__ import annotations

import numpy as np
import pytest

from datagen import face_pixels, fer_line, write_fer_csv, write_folder_tree, write_image
from fer_ray.cli import main
from fer_ray.data.catalog import Catalog
from fer_ray.data.synthetic import GENERATOR_VERSION


def prepare(*args) -> int:
    return main(["prepare", *map(str, args)])


def one_line_error(capsys) -> str:
    """The error line. Ray's own progress logs (from this test or a finished dataset of an
    earlier one) may share stderr, so the error must be its last line and the only one."""
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert [l for l in lines if l.startswith("fer-ray prepare: error: ")] == lines[-1:], err
    assert "Traceback" not in err.split("fer-ray prepare: error: ")[-1]
    return lines[-1]


def input_cases(tmp_path):
    (tmp_path / "empty.csv").write_bytes(b"")
    (tmp_path / "header.csv").write_text("emotion,pixels,Usage\n")
    (tmp_path / "empty_dir").mkdir()
    write_folder_tree(tmp_path / "odd", {"train": {"happy": 1}, "extra": {"sad": 1}})
    (tmp_path / "kdef").mkdir()
    out = tmp_path / "out"
    return {
        "missing csv": (["--source", "fer2013-csv", "--input", tmp_path / "nope.csv"], "input CSV not found"),
        "empty csv": (["--source", "fer2013-csv", "--input", tmp_path / "empty.csv"], "input CSV is empty"),
        "csv without rows": (["--source", "fer2013-csv", "--input", tmp_path / "header.csv"], "no rows"),
        "csv is a folder": (["--source", "fer2013-csv", "--input", tmp_path], "must be a CSV file"),
        "missing folder": (["--source", "folders", "--input", tmp_path / "nope"], "input folder not found"),
        "empty folder": (["--source", "folders", "--input", tmp_path / "empty_dir"], "no split or emotion folders"),
        "unknown split folder": (["--source", "folders", "--input", tmp_path / "odd"],
                                 "unknown split folder 'extra'"),
        "no --input": (["--source", "folders"], "needs --input"),
        "empty kdef": (["--source", "kdef", "--input", tmp_path / "kdef"], "no KDEF images"),
        "unknown kdef angle": (["--source", "kdef", "--input", tmp_path / "kdef", "--angles", "S,UP"],
                               "unknown KDEF angle"),
        "too few synthetic": (["--source", "synthetic", "--count", 3], "at least 7"),
        "size too big": (["--source", "synthetic", "--size", 2000], "image size 2000 is outside 8..1024"),
        # flags another source would silently ignore
        "angles without kdef": (["--source", "synthetic", "--angles", "XX"], "--angles and --face-crop apply to "
                                "--source kdef, not --source synthetic"),
        "face crop without kdef": (["--source", "folders", "--input", tmp_path / "odd", "--face-crop"],
                                   "apply to --source kdef"),
        "max pixels on a csv": (["--source", "fer2013-csv", "--input", tmp_path / "header.csv", "--max-pixels", 9],
                                "--max-pixels applies to image files"),
    }, out


@pytest.mark.parametrize("case", [
    "missing csv", "empty csv", "csv without rows", "csv is a folder", "missing folder",
    "empty folder", "unknown split folder", "no --input", "empty kdef", "unknown kdef angle",
    "too few synthetic", "size too big", "angles without kdef", "face crop without kdef", "max pixels on a csv"])
def test_input_level_problem_is_one_line_and_exit_2(tmp_path, capsys, case):
    cases, out = input_cases(tmp_path)
    args, message = cases[case]
    assert prepare(*args, "--output", out) == 2
    assert message in one_line_error(capsys)
    assert not out.exists()  # nothing half-written


def test_unknown_source_is_one_line_and_exit_2(tmp_path, capsys):
    assert prepare("--source", "affectnet", "--input", tmp_path, "--output", tmp_path / "o") == 2
    assert "unknown source 'affectnet'" in one_line_error(capsys)
    assert not (tmp_path / "o").exists()


def test_output_that_is_a_file_is_one_line_and_exit_2(tmp_path, capsys):
    (tmp_path / "out.txt").write_text("mine")
    assert prepare("--source", "synthetic", "--output", tmp_path / "out.txt", "--overwrite") == 2
    assert "is a file; the catalog is a folder" in one_line_error(capsys)
    assert (tmp_path / "out.txt").read_text() == "mine"


def test_existing_output_is_refused(tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    assert prepare("--source", "synthetic", "--output", tmp_path / "out") == 2
    assert "exists and is not empty" in one_line_error(capsys)
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_max_pixels_flag_rejects_big_images_and_keeps_the_rest(tmp_path, ray_session, capsys):
    write_folder_tree(tmp_path / "in", {"train": {"happy": 7, "sad": 7}, "test": {"happy": 2}})
    write_image(tmp_path / "in" / "train" / "happy" / "poster.png", np.full((400, 300), 90, np.uint8))
    assert prepare("--source", "folders", "--input", tmp_path / "in", "--output", tmp_path / "out",
                   "--max-pixels", 100_000) == 0
    manifest = Catalog.open(tmp_path / "out").manifest
    assert manifest["rejected"]["rows"] == [{
        "id": "train/happy/poster.png",
        "reason": "image too large: 300x400 = 120000 pixels > limit 100000"}]
    assert sum(c["total"] for c in manifest["counts"].values()) == 16
    printed = capsys.readouterr().out
    assert "rejected: 1" in printed and "image too large" in printed


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_nothing_usable_is_an_input_error_through_the_cli(tmp_path, ray_session, capsys):
    lines = [fer_line(9, face_pixels(1)[0]), fer_line(1, "1 2 3")]
    path = write_fer_csv(tmp_path / "bad.csv", lines)
    assert prepare("--source", "fer2013-csv", "--input", path, "--output", tmp_path / "out") == 2
    assert "no usable images in the input (2 rejected" in one_line_error(capsys)


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_synthetic_prepare_through_the_cli(tmp_path, ray_session, capsys):
    assert prepare("--source", "synthetic", "--count", 140, "--seed", 7, "--size", 40,
                   "--split", "random", "--output", tmp_path / "out") == 0
    manifest = Catalog.open(tmp_path / "out").manifest
    assert manifest["source"] == {"kind": "synthetic", "count": 140, "seed": 7,
                                  "generator_version": GENERATOR_VERSION,
                                  "content_sha256": manifest["source"]["content_sha256"]}
    assert manifest["split_mode"] == "random" and manifest["image_size"] == 40
    assert [manifest["counts"][s]["total"] for s in ("train", "val", "test")] == [112, 14, 14]
    assert Catalog.open(tmp_path / "out").load("val")["image"].shape == (14, 40, 40)
    assert "catalog written to" in capsys.readouterr().out


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_a_catalog_without_train_records_no_pixel_statistics(tmp_path, ray_session, capsys):
    """A test-only catalog (e.g. FER2013's PrivateTest rows, to evaluate on) has no train split:
    its manifest says so with null statistics, not a mean and std of 0 that look measured."""
    lines = [fer_line(i % 7, p, usage="PrivateTest") for i, p in enumerate(face_pixels(14))]
    path = write_fer_csv(tmp_path / "test.csv", lines)
    assert prepare("--source", "fer2013-csv", "--input", path, "--output", tmp_path / "out") == 0
    manifest = Catalog.open(tmp_path / "out").manifest
    assert list(manifest["counts"]) == ["test"]
    assert manifest["pixel_mean"] is None and manifest["pixel_std"] is None
    assert "train pixel mean: none (no train split" in capsys.readouterr().out
