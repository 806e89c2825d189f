"""Classification metrics as the paper reports them, plus the macro view it omits.

For single-label data every prediction is one true positive or one false positive for some
class and one false negative for another, so micro precision = micro recall = micro F1 =
accuracy. Macro averages (unweighted mean over emotions) expose the rare classes (FER2013's
disgust has 1.5% of the images) that accuracy hides.
"""

from __future__ import annotations

import numpy as np

from fer_ray.emotions import EMOTIONS
from fer_ray.errors import FerRayError

MICRO_NOTE = ("single-label data: micro precision = micro recall = micro F1 = accuracy; "
              "macro = unweighted mean over the 7 emotions")


def classification_metrics(y_true, y_pred, labels=EMOTIONS) -> dict:
    """Accuracy, micro and macro P/R/F1, per-emotion P/R/F1/support, confusion matrix
    (scikit-learn's; an emotion never predicted, or absent, scores 0, not NaN)."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if len(y_true) != len(y_pred):
        raise FerRayError(f"{len(y_true)} labels but {len(y_pred)} predictions")
    if len(y_true) == 0:
        raise FerRayError("no examples to evaluate")
    for name, y in (("labels", y_true), ("predictions", y_pred)):
        # scikit-learn, given the class list, would leave out -1 (an unknown emotion) silently
        if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= len(labels):
            raise FerRayError(f"{name} must be integer class indices 0..{len(labels) - 1}, "
                              f"got {y.dtype} values {y.min()}..{y.max()}")
    classes = np.arange(len(labels))
    cm = confusion_matrix(y_true, y_pred, labels=classes)
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=classes,
                                                                     zero_division=0)
    micro = float(np.trace(cm) / cm.sum())
    return {
        "count": int(cm.sum()),
        "accuracy": micro,
        "micro": {"precision": micro, "recall": micro, "f1": micro},
        "macro": {"precision": float(precision.mean()), "recall": float(recall.mean()), "f1": float(f1.mean())},
        "per_class": {name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(n)}
                      for name, p, r, f, n in zip(labels, precision, recall, f1, support)},
        "confusion_matrix": cm.tolist(),
        "labels": list(labels),
        "averaging_note": MICRO_NOTE,
    }


def headline_figures(metrics: dict) -> dict:
    """The two figures a summary table keeps per row: accuracy and macro F1."""
    return {"accuracy": metrics["accuracy"], "macro_f1": metrics["macro"]["f1"]}
