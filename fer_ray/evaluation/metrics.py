"""Classification metrics as the paper reports them, plus the macro view it omits.

For single-label data every prediction is one true positive or one false positive for some
class and one false negative for another, so micro precision = micro recall = micro F1 =
accuracy. Macro averages (unweighted mean over emotions) expose the rare classes (FER2013's
disgust has 1.5% of the images) that accuracy hides.
"""

from __future__ import annotations

import numpy as np

from fer_ray.emotions import EMOTIONS

MICRO_NOTE = ("single-label data: micro precision = micro recall = micro F1 = accuracy; "
              "macro = unweighted mean over the 7 emotions")


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n: int = len(EMOTIONS)) -> np.ndarray:
    """Rows = true emotion, columns = predicted emotion."""
    cm = np.zeros((n, n), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true, np.int64), np.asarray(y_pred, np.int64)), 1)
    return cm


def _safe_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.divide(a, b, out=np.zeros_like(a), where=b > 0)


def classification_metrics(y_true, y_pred, labels=EMOTIONS) -> dict:
    """Accuracy, micro and macro P/R/F1, per-emotion P/R/F1/support, confusion matrix."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if len(y_true) != len(y_pred):
        raise ValueError(f"{len(y_true)} labels but {len(y_pred)} predictions")
    if len(y_true) == 0:
        raise ValueError("no examples to evaluate")
    for name, y in (("labels", y_true), ("predictions", y_pred)):
        # np.add.at would count -1 (an unknown emotion) as the last class, and truncate 1.7 to 1
        if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= len(labels):
            raise ValueError(f"{name} must be integer class indices 0..{len(labels) - 1}, "
                             f"got {y.dtype} values {y.min()}..{y.max()}")
    cm = confusion_matrix(y_true, y_pred, len(labels))
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    precision = _safe_div(tp, predicted)
    recall = _safe_div(tp, support)
    f1 = _safe_div(2 * precision * recall, precision + recall)
    micro = float(tp.sum() / cm.sum())
    return {
        "count": int(cm.sum()),
        "accuracy": micro,
        "micro": {"precision": micro, "recall": micro, "f1": micro},
        "macro": {"precision": float(precision.mean()), "recall": float(recall.mean()), "f1": float(f1.mean())},
        "per_class": {name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
                      for name, p, r, f, s in zip(labels, precision, recall, f1, support)},
        "confusion_matrix": cm.tolist(),
        "labels": list(labels),
        "averaging_note": MICRO_NOTE,
    }


def headline_figures(metrics: dict) -> dict:
    """The two figures a summary table keeps per row: accuracy and macro F1."""
    return {"accuracy": metrics["accuracy"], "macro_f1": metrics["macro"]["f1"]}
