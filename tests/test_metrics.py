"""The metrics dict carries scikit-learn's figures, field by field; reports label split and averaging."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

from fer_ray.emotions import EMOTIONS
from fer_ray.evaluation.metrics import classification_metrics
from fer_ray.evaluation.report import comparison_table, write_report


@pytest.fixture
def predictions():
    rng = np.random.default_rng(7)
    y_true = rng.integers(0, 7, 500)
    y_pred = np.where(rng.random(500) < 0.6, y_true, rng.integers(0, 7, 500))
    y_pred[y_pred == 1] = 2  # "disgust" never predicted: precision must be 0, not NaN
    return y_true, y_pred


def test_metrics_match_sklearn(predictions):
    y_true, y_pred = predictions
    m = classification_metrics(y_true, y_pred)
    labels = list(range(7))
    assert m["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    for avg in ("micro", "macro"):
        p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, labels=labels, average=avg, zero_division=0)
        assert (m[avg]["precision"], m[avg]["recall"], m[avg]["f1"]) == pytest.approx((p, r, f))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    for i, name in enumerate(EMOTIONS):
        c = m["per_class"][name]
        assert (c["precision"], c["recall"], c["f1"], c["support"]) == pytest.approx((p[i], r[i], f[i], s[i]))
    assert m["confusion_matrix"] == confusion_matrix(y_true, y_pred, labels=labels).tolist()
    assert m["micro"]["precision"] == m["micro"]["recall"] == m["accuracy"]


def test_metrics_reject_bad_input():
    with pytest.raises(ValueError, match="no examples"):
        classification_metrics([], [])
    with pytest.raises(ValueError, match="labels but"):
        classification_metrics([0, 1], [0])
    # -1 (an unknown emotion) was counted as "neutral", 7 an IndexError, 1.7 truncated to 1
    for y_true, y_pred in (([0, 1], [0, -1]), ([0, 7], [0, 1]), ([0, 1.7], [0, 1])):
        with pytest.raises(ValueError, match="must be integer class indices 0..6"):
            classification_metrics(y_true, y_pred)


def test_report_files_state_protocol(tmp_path, predictions):
    m = classification_metrics(*predictions)
    path = write_report(m, str(tmp_path), "small_cnn on test", "split 'test' of catalog X")
    text = path.read_text()
    assert "split 'test' of catalog X" in text and "micro precision = micro recall" in text
    assert "| disgust |" in text
    assert json.loads((tmp_path / "metrics.json").read_text())["protocol"] == "split 'test' of catalog X"
    for png in ("confusion_matrix.png", "per_class.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = comparison_table([("a", m), ("b", m)], "split 'val'")
    assert table.count("| a |") == 1 and "split 'val'" in table


def test_figure_titles_stay_inside_the_figure(predictions):
    """A long protocol (deep input path) is wrapped, not cut off at the PNG's edges."""
    from fer_ray.evaluation.report import confusion_figure, per_class_figure

    protocol = ("split 'test' of catalog 'fer2013' (csv: /mnt/datasets/team/facial-expressions/raw/"
                "fer2013/fer2013.csv; split mode source), 3589 images, test-time augmentation: none")
    metrics = classification_metrics(*predictions)
    for make in (confusion_figure, per_class_figure):
        fig = make(metrics, f"cnn vgg16_bn on test\n{protocol}")
        fig.canvas.draw()
        title = fig.axes[0].title
        box = title.get_window_extent()
        assert title.get_text().count("\n") >= 3  # wrapped
        assert 0 <= box.x0 and box.x1 <= fig.bbox.width and box.y1 <= fig.bbox.height, make.__name__


def test_an_evaluation_never_writes_over_an_earlier_report_unasked(synthetic_catalog, small_artifact, tmp_path):
    from fer_ray.evaluation.evaluate import run_evaluate

    out = tmp_path / "report"
    settings = {"catalog": str(synthetic_catalog), "output": str(out), "device": "cpu"}
    assert run_evaluate(str(small_artifact), split="val", **settings)["accuracy"] > 0.6
    with pytest.raises(ValueError, match="--output .* exists and is not empty; .*pass --overwrite"):
        run_evaluate(str(small_artifact), split="test", **settings)
    assert json.loads((out / "metrics.json").read_text())["protocol"].startswith("split 'val'")
    run_evaluate(str(small_artifact), split="test", overwrite=True, **settings)
    assert json.loads((out / "metrics.json").read_text())["protocol"].startswith("split 'test'")
