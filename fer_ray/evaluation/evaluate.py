"""``fer-ray evaluate``: an artifact on one catalog split -> metrics.json, report.md, plots."""

from __future__ import annotations

import logging
from pathlib import Path

from fer_ray.artifacts import update_metrics
from fer_ray.data.catalog import Catalog
from fer_ray.emotions import ranked_emotions
from fer_ray.evaluation.config import EvaluateConfig
from fer_ray.evaluation.metrics import classification_metrics, headline_figures
from fer_ray.evaluation.report import write_report
from fer_ray.inference.predictor import Predictor
from fer_ray.rundir import open_run

log = logging.getLogger(__name__)


def run_evaluate(artifact: str, **settings) -> dict:
    """``fer-ray evaluate``: ``evaluate_artifact`` into ``output``, which must be new or empty unless
    ``overwrite`` (so an earlier report is not written over by accident). ``settings`` are
    ``EvaluateConfig``'s fields."""
    cfg = EvaluateConfig(**settings)
    with open_run(cfg.output, overwrite=cfg.overwrite, flag="--output"):
        return evaluate_artifact(artifact, cfg.catalog, cfg.split, cfg.output, tta=cfg.tta, device=cfg.device)


def evaluate_artifact(artifact: str, catalog: Catalog | str, split: str, output: str, tta: str = "none",
                      device: str = "auto", predictor: Predictor | None = None) -> dict:
    """Evaluate and write the report; also records the result in the artifact's model.json
    (except in a model that ships with fer-ray, marked ``"shipped": true`` by ``pretrained.ship``)."""
    catalog = Catalog.open(catalog)
    predictor = predictor or Predictor(artifact, device=device)
    data = catalog.load(split)
    probs = predictor.predict_proba(data["image"], tta=tta)
    metrics = classification_metrics(data["label"], ranked_emotions(probs)[:, 0])
    proto = catalog.protocol(split, tta)
    write_report(metrics, output, f"{predictor.kind} {predictor.meta.get('architecture', '')} on {split}".strip(),
                 proto)
    if not predictor.meta.get("shipped"):  # a model.json of the installed package is not ours to write
        update_metrics(artifact, {metrics_key(predictor.meta, catalog, split, tta): {
            **headline_figures(metrics), "count": metrics["count"], "protocol": proto}})
    return metrics


def metrics_key(meta: dict, catalog: Catalog, split: str, tta: str) -> str:
    """Where model.json records a result: the split's name on the catalog the artifact was
    trained on (``val``, ``test+tta-flip``), prefixed on any other catalog by its folder name
    and the start of its checksum (``kdef@1f2e3d4c:test``), so evaluating elsewhere never
    overwrites those figures, nor two catalogs in folders of the same name each other's."""
    key = split if tta == "none" else f"{split}+tta-{tta}"
    trained_on = (meta.get("catalog") or {}).get("sha256")
    if trained_on != catalog.sha256:
        key = f"{catalog.path.resolve().name}@{catalog.sha256[:8]}:{key}"
    return key


def evaluate_splits(artifact: str, catalog: Catalog, run_dir: Path, tta: str = "none", prefix: str = "") -> dict:
    """Evaluate an artifact on the catalog's val and test splits (those present) into
    ``run_dir/eval-<split>/``: what every training, baseline and sweep run ends with. The
    artifact is loaded once for both; each split's line is logged after ``prefix`` (the stage's)."""
    evals, predictor = {}, Predictor(artifact)
    for split in ("val", "test"):
        if catalog.has(split):
            evals[split] = evaluate_artifact(str(artifact), catalog, split, str(Path(run_dir) / f"eval-{split}"), tta=tta,
                                             predictor=predictor)
            log.info(f"{prefix}{split} accuracy {evals[split]['accuracy']:.4f} "
                     f"(macro F1 {evals[split]['macro']['f1']:.4f}, TTA {tta})")
    return evals
