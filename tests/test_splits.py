"""Split assignment: the source's own split (with the 10% val carve), the paper's stratified
80/10/10, and identity-disjoint (KDEF)."""

from __future__ import annotations

import numpy as np
import pytest

from fer_ray.data import splits


def labels_of(per_class: list[int]) -> np.ndarray:
    labels = np.concatenate([np.full(n, c) for c, n in enumerate(per_class)])
    return np.random.default_rng(1).permutation(labels)


def test_random_split_is_stratified_80_10_10_per_class():
    per_class = [400, 40, 410, 720, 480, 310, 500]
    labels = labels_of(per_class)
    out = splits.assign("random", labels, np.array(["train"] * len(labels), object),
                        np.array([""] * len(labels), object), seed=0)
    assert set(out) == {"train", "val", "test"}
    for c, n in enumerate(per_class):
        mine = out[labels == c]
        assert (mine == "train").sum() == round(n * 0.8)
        assert (mine == "val").sum() == round(n * 0.1)
        assert (mine == "test").sum() == n - round(n * 0.8) - round(n * 0.1)


def test_random_split_is_seeded():
    labels = labels_of([50] * 7)
    a, b = splits.stratified(labels, seed=5), splits.stratified(labels, seed=5)
    c = splits.stratified(labels, seed=6)
    assert a.tolist() == b.tolist()
    assert a.tolist() != c.tolist()


def test_source_split_carves_a_stratified_10_percent_val_from_train_only():
    per_class_train = [300, 30, 310, 500, 400, 200, 350]
    labels_train = labels_of(per_class_train)
    labels = np.concatenate([labels_train, np.arange(70) % 7])
    source = np.array(["train"] * len(labels_train) + ["test"] * 70, dtype=object)
    out = splits.assign("source", labels, source, np.array([""] * len(labels), object), seed=0)
    assert (out[len(labels_train):] == "test").all()  # the test split is never touched
    for c, n in enumerate(per_class_train):
        mine = out[: len(labels_train)][labels_train == c]
        assert (mine == "val").sum() == round(n * 0.1)
        assert (mine == "train").sum() == n - round(n * 0.1)
    again = splits.assign("source", labels, source, np.array([""] * len(labels), object), seed=0)
    assert out.tolist() == again.tolist()
    other = splits.assign("source", labels, source, np.array([""] * len(labels), object), seed=1)
    assert out.tolist() != other.tolist()


def test_source_split_keeps_an_existing_val():
    labels = np.arange(30) % 7
    source = np.array(["train"] * 20 + ["val"] * 5 + ["test"] * 5, dtype=object)
    out = splits.assign("source", labels, source, np.array([""] * 30, object))
    assert out.tolist() == source.tolist()


@pytest.mark.parametrize("n_subjects", [3, 10, 35, 70])
def test_subject_split_is_identity_disjoint(n_subjects):
    rng = np.random.default_rng(0)
    subjects = np.array([f"S{s:02d}" for s in rng.integers(0, n_subjects, 2000)], dtype=object)
    subjects[:n_subjects] = [f"S{s:02d}" for s in range(n_subjects)]  # every subject present
    out = splits.by_subject(subjects, seed=0)
    owner = {}
    for subject, split in zip(subjects, out):
        assert owner.setdefault(subject, split) == split, f"{subject} is in two splits"
    per_split = {s: sum(1 for v in owner.values() if v == s) for s in ("train", "val", "test")}
    assert per_split["val"] == max(1, round(n_subjects * 0.1))
    assert per_split["test"] >= 1
    assert per_split["train"] == n_subjects - per_split["val"] - per_split["test"]
    if n_subjects >= 10:
        assert per_split["train"] == round(n_subjects * 0.8)


def test_subject_split_of_one_or_two_subjects_is_all_train():
    for subjects in (["F01"] * 4, ["F01", "M02", "F01"]):
        assert set(splits.by_subject(np.array(subjects, dtype=object))) == {"train"}


def test_subject_split_is_seeded():
    subjects = np.array([f"F{s:02d}" for s in range(35)] * 4, dtype=object)
    a = splits.assign("subject", np.zeros(140, int), subjects, subjects, seed=0)
    b = splits.assign("subject", np.zeros(140, int), subjects, subjects, seed=0)
    c = splits.assign("subject", np.zeros(140, int), subjects, subjects, seed=9)
    assert a.tolist() == b.tolist() and a.tolist() != c.tolist()


def test_subject_split_needs_subjects_and_modes_are_checked():
    with pytest.raises(ValueError, match="needs a subject"):
        splits.by_subject(np.array(["F01", ""], dtype=object))
    with pytest.raises(ValueError, match="unknown split mode"):
        splits.assign("kfold", np.zeros(3, int), np.array(["train"] * 3, object),
                      np.array([""] * 3, object))
