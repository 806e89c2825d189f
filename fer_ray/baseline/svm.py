"""The paper's linear baseline: multiclass hinge loss with an L2 penalty, on standardised pixels.

The objective, written the paper's way (a per-image average plus lambda times the squared
weights), is::

    (1/N) * sum_i hinge(W x_i + b, y_i)  +  lambda * ||W||^2

with scikit-learn's one-vs-rest hinge (one binary hinge per emotion; ``loss="squared_hinge"``
swaps in its square, which is not the paper's loss). The two solvers minimise
the same objective up to a constant factor, so one ``lambda`` means the same model for both:

- ``liblinear`` (``LinearSVC(loss="hinge")``, exact dual coordinate descent):
  ``1/2 ||w||^2 + C sum_i hinge`` divided by ``C N`` gives ``C = 1 / (2 lambda N)``.
- ``sgd`` (``SGDClassifier(loss="hinge")``): ``(1/N) sum_i hinge + alpha/2 ||w||^2`` gives
  ``alpha = 2 lambda``. Faster, a few points less accurate (see benchmarks/RESULTS.md).

Inputs: pixels on the 0..1 scale minus the train split's mean image, each divided by its own
train standard deviation (scikit-learn's StandardScaler, per pixel). On FER2013 this scored
0.1-0.3 points above one global scale (benchmarks/RESULTS.md); a pixel that barely varies in
training is divided by at least a tenth of the global deviation, so it cannot amplify noise
at test time. The fitted model is plain arrays (coefficients, intercepts, mean image,
per-pixel scale; ``linear.LinearSvm``) saved as a kind "svm" artifact, so loading it unpickles
nothing.
"""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path

import numpy as np

from fer_ray.artifacts import save_artifact
from fer_ray.baseline.config import BaselineConfig
from fer_ray.baseline.linear import LinearSvm, flatten
from fer_ray.choices import SVM_DEFAULT_LAMBDA as DEFAULT_LAMBDA, SVM_LOSSES as LOSSES, SVM_SOLVERS as SOLVERS
from fer_ray.data.catalog import Catalog
from fer_ray.emotions import NUM_CLASSES
from fer_ray.errors import FerRayError
from fer_ray.evaluation.evaluate import evaluate_splits
from fer_ray.rundir import open_run

log = logging.getLogger(__name__)
# A pixel's scale is at least this fraction of the global pixel deviation (see the module doc).
MIN_SCALE_FRACTION = 0.1


def solver_parameter(solver: str, lam: float, n: int) -> dict:
    """scikit-learn's regularisation parameter for ``lambda`` (see the module docstring)."""
    if not 0 < lam < float("inf"):  # NaN too: scikit-learn would complain about C instead
        raise FerRayError(f"--lambda must be a positive finite number, got {lam}")
    if solver == "liblinear":
        return {"C": 1.0 / (2.0 * lam * n)}
    if solver == "sgd":
        return {"alpha": 2.0 * lam}
    raise FerRayError(f"unknown SVM solver {solver!r}; expected one of {SOLVERS}")


def fit_svm(images: np.ndarray, labels: np.ndarray, lam: float = DEFAULT_LAMBDA, solver: str = "liblinear",
            max_iter: int = 1000, tol: float = 1e-4, seed: int = 0, loss: str = "hinge") -> tuple[LinearSvm, dict]:
    """Fit on uint8 faces; returns the model and what the fit did (solver, C/alpha, seconds).

    ``loss="squared_hinge"`` (scikit-learn's LinearSVC default, solved in the primal) is not
    the paper's loss; it is offered because it scores about a point higher on FER2013.
    """
    if loss not in LOSSES:
        raise FerRayError(f"unknown SVM loss {loss!r}; expected one of {LOSSES}")
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import SGDClassifier
    from sklearn.svm import LinearSVC

    labels = np.asarray(labels, np.int64)
    present = np.unique(labels)
    if len(present) < 2:
        raise FerRayError(f"the SVM needs at least two emotions in its training data, got {present.tolist()}")
    flat = flatten(images)
    mean = flat.mean(axis=0)
    spread = float(flat.std()) or 1.0
    scale = np.maximum(flat.std(axis=0), MIN_SCALE_FRACTION * spread)
    model = LinearSvm(np.zeros((NUM_CLASSES, flat.shape[1]), np.float32), np.zeros(NUM_CLASSES, np.float32),
                      mean.astype(np.float32), scale.astype(np.float32))
    x = model.inputs(flat)
    param = solver_parameter(solver, lam, len(labels))
    if solver == "liblinear":
        # The hinge loss has only the dual solver; the squared hinge's primal is faster when N >> D.
        clf = LinearSVC(loss=loss, dual=loss == "hinge", max_iter=max_iter, tol=tol, random_state=seed, **param)
    else:
        clf = SGDClassifier(loss=loss, penalty="l2", max_iter=max_iter, tol=tol, random_state=seed, **param)
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        clf.fit(x, labels)
    seconds = time.perf_counter() - t0
    coef, intercept = np.asarray(clf.coef_, np.float32), np.asarray(clf.intercept_, np.float32)
    if len(present) == 2:  # scikit-learn keeps one row for two classes: +w for the second, -w for the first
        coef, intercept = np.concatenate([-coef, coef]), np.concatenate([-intercept, intercept])
    # An emotion absent from training can never be predicted: score it far below the others.
    model.intercept[:] = -1e4
    model.coef[present], model.intercept[present] = coef, intercept
    info = {"solver": solver, "loss": loss, "lambda": lam, **param, "max_iter": max_iter, "tol": tol,
            "iterations": int(np.max(clf.n_iter_)), "converged": not any(issubclass(w.category, ConvergenceWarning)
                                                                       for w in caught),
            "train_count": int(len(labels)), "fit_seconds": round(seconds, 2)}
    return model, info


def save_svm(path: str, model: LinearSvm, info: dict, catalog: Catalog) -> Path:
    meta = {"architecture": "linear_svm", "num_classes": NUM_CLASSES, "image_size": catalog.image_size,
            "in_channels": 1,
            "objective": f"(1/N) sum one-vs-rest {info['loss']} + lambda ||W||^2 on standardised pixels",
            "probabilities": "softmax of the hinge scores (argmax exact, not calibrated)",
            "catalog": catalog.identity,
            "fit": info}
    return save_artifact(path, "svm", model.arrays(), meta)


def run_baseline(catalog: Catalog | str, run_dir: str, **settings) -> dict:
    """``fer-ray baseline``: fit, save ``run_dir/artifact``, evaluate on val and test; return
    the summary ``result.json`` keeps. ``settings`` are ``BaselineConfig``'s other fields (lam,
    solver, loss, max_iter, overwrite).

    A run directory holding another run (or this one with another lambda) is refused unless
    ``overwrite``: a second SVM would silently replace the first."""
    cfg = BaselineConfig(catalog=str(catalog), run_dir=run_dir, **settings)
    lam, solver, loss, max_iter = cfg.lam, cfg.solver, cfg.loss, cfg.max_iter
    # A wrong --catalog fails before the run directory is claimed.
    catalog = Catalog.open(catalog).require("train")
    config = {**catalog.run_settings, "lambda": lam, "solver": solver, "loss": loss, "max_iter": max_iter}
    with open_run(run_dir, "baseline", config, overwrite=cfg.overwrite) as run:
        if run.done:
            return run.done
        out = run.claim()  # run.json records these settings
        t0 = time.perf_counter()
        train = catalog.load("train")
        model, info = fit_svm(train["image"], train["label"], lam, solver, max_iter, loss=loss)
        artifact = save_svm(str(out / "artifact"), model, info, catalog)
        scale = ", ".join(f"{k} {info[k]:.3g}" for k in ("C", "alpha") if k in info)
        log.info(f"baseline: {solver} {loss} lambda {lam:g} ({scale}) "
                 f"fitted on {info['train_count']} images in {info['fit_seconds']:.1f} s"
                 + ("" if info["converged"] else f" (stopped at max_iter {max_iter} before converging)"))
        evals = evaluate_splits(str(artifact), catalog, out, prefix="baseline: ")
        return run.finish({"artifact": str(artifact), "fit": info, "seconds": round(time.perf_counter() - t0, 2),
                           "evaluations": evals})
