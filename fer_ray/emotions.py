"""The seven emotion labels, in FER2013 order, and the names other datasets use for them.

Every label in fer-ray is an index into ``EMOTIONS``: the FER2013 CSV's own integers, so a
catalog built from any source can be mixed with FER2013 and compared against the paper.
"""

from __future__ import annotations

import numpy as np

from fer_ray.errors import FerRayError

EMOTIONS: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
NUM_CLASSES = len(EMOTIONS)
UNKNOWN = -1  # label of a row whose emotion is not known (e.g. a scoring input)

# Folder names seen in the wild (Kaggle FER2013, AffectNet exports, RAF-DB dumps, ...).
_SYNONYMS = {
    "angry": "angry", "anger": "angry", "mad": "angry",
    "disgust": "disgust", "disgusted": "disgust",
    "fear": "fear", "fearful": "fear", "afraid": "fear", "scared": "fear",
    "happy": "happy", "happiness": "happy", "joy": "happy",
    "sad": "sad", "sadness": "sad",
    "surprise": "surprise", "surprised": "surprise",
    "neutral": "neutral", "calm": "neutral",
}

# KDEF file names carry a two-letter expression code (e.g. AF01AFS.JPG -> "AF").
KDEF_CODES = {
    "AF": "fear", "AN": "angry", "DI": "disgust", "HA": "happy",
    "NE": "neutral", "SA": "sad", "SU": "surprise",
}


def label_from_name(name: str) -> int:
    """Return the FER2013 index of an emotion name or synonym (case-insensitive).

    Raises ValueError naming the accepted names, so a mistyped folder is never silently
    dropped or mislabelled.
    """
    key = name.strip().lower()
    if key not in _SYNONYMS:
        raise FerRayError(
            f"unknown emotion {name!r}; expected one of {sorted(_SYNONYMS)}"
        )
    return EMOTIONS.index(_SYNONYMS[key])


def label_from_index(value: int) -> int:
    """Validate an integer label (FER2013 CSV ``emotion`` column)."""
    if not 0 <= value < NUM_CLASSES:
        raise FerRayError(f"unknown emotion index {value}; expected 0..{NUM_CLASSES - 1}")
    return value


def ranked_emotions(probs: np.ndarray) -> np.ndarray:
    """Emotion indices from likeliest to least, along the last axis of ``probs`` ((7,) or (N, 7)).

    ``score``, ``predict`` and ``evaluate`` take their labels (``[..., 0]``) and top-k from here,
    so that they agree on a face whose top probabilities are exactly equal: ties go to the lower
    index, as ``argmax`` (which ``serve`` uses) has them. ``np.argsort``'s default sort is not
    stable: ``predict`` named "happy" where ``score`` named "fear" for the same face.
    """
    return np.argsort(-np.asarray(probs), axis=-1, kind="stable")
