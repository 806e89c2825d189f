"""Train/val/test assignment: the source's own split, stratified random, or identity-disjoint.

All functions are seeded and depend only on their inputs, so a catalog rebuilt from the same
source and seed has the same splits.
"""

from __future__ import annotations

import numpy as np

from fer_ray.errors import FerRayError

SPLIT_MODES = ("source", "random", "subject")
PAPER_FRACTIONS = (0.8, 0.1, 0.1)


def stratified(labels: np.ndarray, fractions=PAPER_FRACTIONS, seed: int = 0) -> np.ndarray:
    """Assign train/val/test per class in the given fractions (the paper's 80/10/10)."""
    rng = np.random.default_rng(seed)
    out = np.empty(len(labels), dtype=object)
    for label in np.unique(labels):
        idx = np.flatnonzero(labels == label)
        rng.shuffle(idx)
        n_train = int(round(len(idx) * fractions[0]))
        n_val = int(round(len(idx) * fractions[1]))
        out[idx[:n_train]] = "train"
        out[idx[n_train : n_train + n_val]] = "val"
        out[idx[n_train + n_val :]] = "test"
    return out


def carve_val(labels: np.ndarray, splits: np.ndarray, fraction: float = 0.1, seed: int = 0) -> np.ndarray:
    """Move a seeded, stratified ``fraction`` of each class of ``train`` into ``val``."""
    rng = np.random.default_rng(seed)
    out = splits.copy()
    train = splits == "train"
    for label in np.unique(labels[train]):
        idx = np.flatnonzero(train & (labels == label))
        rng.shuffle(idx)
        out[idx[: int(round(len(idx) * fraction))]] = "val"
    return out


def by_subject(subjects: np.ndarray, fractions=PAPER_FRACTIONS, seed: int = 0) -> np.ndarray:
    """Identity-disjoint split: every subject's images land in exactly one split."""
    if any(not s for s in subjects):
        raise FerRayError("a subject-disjoint split needs a subject for every row (KDEF)")
    unique = np.array(sorted(set(subjects)))
    rng = np.random.default_rng(seed)
    rng.shuffle(unique)
    n = len(unique)
    n_train, n_val = int(round(n * fractions[0])), int(round(n * fractions[1]))
    if n >= 3:  # every split gets at least one subject (5 subjects: 3/1/1, not 4/0/1)
        n_val = max(1, n_val)
        n_train = min(n_train, n - n_val - 1)
    else:
        n_train, n_val = n, 0
    split_of = dict(zip(unique, ["train"] * n_train + ["val"] * n_val + ["test"] * (n - n_train - n_val)))
    return np.array([split_of[s] for s in subjects], dtype=object)


def assign(mode: str, labels: np.ndarray, source_splits: np.ndarray, subjects: np.ndarray,
           seed: int = 0, val_fraction: float = 0.1) -> np.ndarray:
    """Final split of every accepted row.

    ``source`` keeps the source's split; if the source has train rows but no val rows (the
    Kaggle folders, a CSV without PublicTest), a stratified ``val_fraction`` of train becomes
    val. ``random`` is the paper's stratified 80/10/10. ``subject`` is identity-disjoint.
    """
    if mode not in SPLIT_MODES:
        raise FerRayError(f"unknown split mode {mode!r}; expected one of {SPLIT_MODES}")
    if mode == "random":
        return stratified(labels, seed=seed)
    if mode == "subject":
        return by_subject(subjects, seed=seed)
    splits = np.asarray(source_splits, dtype=object)
    if (splits == "train").any() and not (splits == "val").any():
        splits = carve_val(labels, splits, val_fraction, seed)
    return splits
