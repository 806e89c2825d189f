"""Write an evaluation: ``metrics.json``, ``report.md``, confusion-matrix and per-class PNGs.

Every figure is labelled with its split and averaging, so a number copied out of a report
can't lose its protocol.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from fer_ray.evaluation.metrics import MICRO_NOTE  # noqa: E402


def write_report(metrics: dict, output: str, title: str, protocol: str) -> Path:
    """Write the evaluation of one model on one split to ``output``; return report.md's path."""
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics | {"protocol": protocol}, indent=2))
    _save(confusion_figure(metrics, f"{title}\n{protocol}"), out / "confusion_matrix.png")
    _save(per_class_figure(metrics, f"{title}\n{protocol}"), out / "per_class.png")
    lines = [
        f"# {title}", "", f"**Protocol:** {protocol}", "",
        f"Examples: {metrics['count']}", "",
        "| metric | value |", "|---|---|",
        f"| accuracy | {metrics['accuracy']:.4f} |",
        f"| micro precision | {metrics['micro']['precision']:.4f} |",
        f"| micro recall | {metrics['micro']['recall']:.4f} |",
        f"| macro precision | {metrics['macro']['precision']:.4f} |",
        f"| macro recall | {metrics['macro']['recall']:.4f} |",
        f"| macro F1 | {metrics['macro']['f1']:.4f} |",
        "", f"_{MICRO_NOTE}._", "",
        "## Per emotion", "", *per_class_table(metrics, 4),
        "", "## Confusion matrix (rows: true, columns: predicted)", "", *confusion_table(metrics),
        "", "![confusion matrix](confusion_matrix.png)", "", "![per-class](per_class.png)", "",
    ]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


def per_class_table(metrics: dict, digits: int) -> list[str]:
    """Markdown rows: precision, recall, F1 and support of each emotion."""
    lines = ["| emotion | precision | recall | F1 | support |", "|---|---:|---:|---:|---:|"]
    for name in metrics["labels"]:
        c = metrics["per_class"][name]
        lines.append(f"| {name} | {c['precision']:.{digits}f} | {c['recall']:.{digits}f} | {c['f1']:.{digits}f} "
                     f"| {c['support']} |")
    return lines


def confusion_table(metrics: dict) -> list[str]:
    """Markdown rows of the confusion matrix (rows: true emotion, columns: predicted)."""
    labels = metrics["labels"]
    lines = ["| true \\ predicted | " + " | ".join(labels) + " |", "|---" * (len(labels) + 1) + "|"]
    return lines + [f"| {name} | " + " | ".join(str(v) for v in row) + " |"
                    for name, row in zip(labels, metrics["confusion_matrix"])]


def _save(fig, path: Path) -> None:
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _title(text: str, width: int) -> str:
    """Wrap each line of a figure title: a long protocol (a deep input path) would otherwise
    run past the figure's edges and be cut off in the PNG."""
    return "\n".join(textwrap.fill(line, width) for line in text.splitlines())


def confusion_figure(metrics: dict, title: str):
    cm = np.asarray(metrics["confusion_matrix"], dtype=np.float64)
    rates = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    labels = metrics["labels"]
    fig, ax = plt.subplots(figsize=(7, 6))
    im = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    for (i, j), rate in np.ndenumerate(rates):
        ax.text(j, i, f"{rate:.2f}\n({int(cm[i, j])})", ha="center", va="center", fontsize=7,
                color="white" if rate > 0.5 else "black")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(_title(f"{title}\nrow-normalised (recall per emotion), counts in brackets", 90), fontsize=9)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    return fig


def per_class_figure(metrics: dict, title: str):
    labels = metrics["labels"]
    x = np.arange(len(labels))
    fig, ax = plt.subplots(figsize=(8, 4))
    for k, key in enumerate(("precision", "recall", "f1")):
        ax.bar(x + (k - 1) * 0.27, [metrics["per_class"][n][key] for n in labels], 0.27, label=key)
    ax.set_xticks(x, labels)
    ax.set_ylim(0, 1)
    ax.legend()
    ax.set_title(_title(f"{title}\nper emotion (one-vs-rest)", 100), fontsize=9)
    fig.tight_layout()
    return fig


def comparison_table(rows: list[tuple[str, dict]], protocol: str) -> str:
    """The paper's table: each model's accuracy and micro/macro P/R on the same split."""
    lines = [f"**Protocol:** {protocol}", "",
             "| model | accuracy | micro P | micro R | macro P | macro R | macro F1 |", "|---|---|---|---|---|---|---|"]
    for name, m in rows:
        lines.append(f"| {name} | {m['accuracy']:.4f} | {m['micro']['precision']:.4f} | {m['micro']['recall']:.4f} "
                     f"| {m['macro']['precision']:.4f} | {m['macro']['recall']:.4f} | {m['macro']['f1']:.4f} |")
    lines += ["", f"_{MICRO_NOTE}._"]
    return "\n".join(lines)


def recall_table(rows: list[tuple[str, dict]]) -> str:
    """Each model's recall per emotion: where accuracy hides the rare classes (disgust, fear)."""
    labels = rows[0][1]["labels"]
    lines = ["| model | " + " | ".join(labels) + " |", "|---" * (len(labels) + 1) + "|"]
    for name, m in rows:
        lines.append(f"| {name} | " + " | ".join(f"{m['per_class'][k]['recall']:.3f}" for k in labels) + " |")
    return "\n".join(lines)
