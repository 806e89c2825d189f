"""Real FER2013 from ../shared/data (skipped, with the reason, when it is absent)."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from fer_ray.data.catalog import Catalog
from fer_ray.data.ingest import build_catalog
from fer_ray.data.preprocess import decode_grey
from fer_ray.data.sources import Fer2013CsvSource, FolderSource
from fer_ray.emotions import EMOTIONS

pytestmark = [pytest.mark.ray, pytest.mark.realdata, pytest.mark.timeout(300)]

# The per-class numbers in ../shared/data/README.md (train folder / test folder).
README_TRAIN = {"angry": 3995, "disgust": 436, "fear": 4097, "happy": 7215, "neutral": 4965,
                "sad": 4830, "surprise": 3171}
README_TEST = {"angry": 467, "disgust": 56, "fear": 496, "happy": 895, "neutral": 607,
               "sad": 653, "surprise": 415}


def test_csv_sample_gives_500_train_and_100_val(fer_csv_sample, ray_session, tmp_path):
    manifest = build_catalog(Fer2013CsvSource(str(fer_csv_sample)), str(tmp_path / "cat"))
    assert manifest["counts"]["train"]["total"] == 500
    assert manifest["counts"]["val"]["total"] == 100
    assert set(manifest["counts"]) == {"train", "val"}  # the sample has no PrivateTest
    assert manifest["rejected"]["count"] == 0

    with open(fer_csv_sample, newline="") as fh:
        rows = list(csv.DictReader(fh))
    for split, usage in (("train", "Training"), ("val", "PublicTest")):
        labels = [int(r["emotion"]) for r in rows if r["Usage"] == usage]
        expected = np.bincount(labels, minlength=7)
        assert [manifest["counts"][split][e] for e in EMOTIONS] == expected.tolist()
    train = Catalog.open(tmp_path / "cat").load("train", columns=("image", "label", "id"))
    by_line = dict(zip(train["id"], zip(train["image"], train["label"])))
    for line in (2, 101, 501):  # header is line 1
        row = rows[line - 2]
        image, label = by_line[f"line:{line}"]
        assert label == int(row["emotion"])
        np.testing.assert_array_equal(image, np.array(row["pixels"].split(), np.uint8).reshape(48, 48))


@pytest.fixture(scope="module")
def folder_catalog(fer_folders, ray_session, tmp_path_factory):
    out = tmp_path_factory.mktemp("fer2013") / "cat"
    return out, build_catalog(FolderSource(str(fer_folders)), str(out))


def test_folder_counts_equal_the_readme(folder_catalog):
    _, manifest = folder_catalog
    counts = manifest["counts"]
    for emotion in EMOTIONS:
        assert counts["train"][emotion] + counts["val"][emotion] == README_TRAIN[emotion]
        assert counts["val"][emotion] == round(README_TRAIN[emotion] * 0.1)
        assert counts["test"][emotion] == README_TEST[emotion]
    assert counts["train"]["total"] + counts["val"]["total"] == 28_709
    assert counts["test"]["total"] == 3_589
    assert manifest["rejected"]["count"] == 0


def test_folder_catalog_finds_the_known_quirks(folder_catalog):
    _, manifest = folder_catalog
    d = manifest["duplicates"]
    # README: byte-identical duplicates, some across train/test, a few with conflicting
    # labels, and about a dozen blank single-colour images.
    assert d["groups"] > 0 and d["cross_split_groups"] > 0 and d["conflicting_label_groups"] > 0
    assert 8 <= manifest["blank_images"]["count"] <= 16
    assert 0.3 < manifest["pixel_mean"] < 0.7 and 0.1 < manifest["pixel_std"] < 0.4


def test_folder_catalog_round_trips_through_load_split(folder_catalog, fer_folders):
    out, manifest = folder_catalog
    rng = np.random.default_rng(0)
    for split in ("train", "val", "test"):
        part = Catalog.open(out).load(split, columns=("image", "label", "id"))
        assert part["image"].shape == (manifest["counts"][split]["total"], 48, 48)
        assert part["image"].dtype == np.uint8
        per_class = np.bincount(part["label"], minlength=7)
        assert per_class.tolist() == [manifest["counts"][split][e] for e in EMOTIONS]
        for i in rng.choice(len(part["id"]), 5, replace=False):
            rel = part["id"][i]
            assert EMOTIONS[part["label"][i]] == rel.split("/")[1]
            np.testing.assert_array_equal(part["image"][i], decode_grey((fer_folders / rel).read_bytes()))
    pixels = Catalog.open(out).load("train")["image"].astype(np.float64) / 255.0
    assert manifest["pixel_mean"] == pytest.approx(pixels.mean(), abs=2e-6)
    assert manifest["pixel_std"] == pytest.approx(pixels.std(), abs=2e-6)
