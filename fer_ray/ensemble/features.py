"""The ``fer-ray ensemble`` stage on Ray: featurize catalog splits, fit the head, report.

Featurizing runs ``stack.MemberFeatures`` (the plain piece: a batch of faces -> each member's
penultimate features, concatenated in member order, and each member's probabilities) through
``map_batches`` on a fixed actor pool (``ActorPoolStrategy``, Ray 2.60's replacement for
``concurrency=``): each actor loads the members once and reuses them for every batch, on a GPU
when the cluster has one. Features are written as Parquet next to the label and row id, so the
logistic head (``stack``) can be refitted without touching a network again.

Output columns: ``features`` float32 (sum of member widths), ``probs`` float32
(members, 7), ``label``, ``id``.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from pathlib import Path

from fer_ray.data.catalog import Catalog
from fer_ray.ensemble.config import EnsembleConfig
from fer_ray.ensemble.stack import (MemberFeatures, choose_head, member_record, read_features, save_ensemble,
                                    soft_vote)
from fer_ray.errors import FerRayError
from fer_ray.rundir import open_run

log = logging.getLogger(__name__)


def plan_actors(cpus: float, gpus: int, gpu: bool, actors: int | None, cpus_per_actor: float) -> tuple[int, float]:
    """(actors, CPUs each) for the featurizer pool.

    Ray Data's read and write tasks take one whole CPU, and the pool's actors keep theirs for
    the whole run: if the actors leave less than one CPU free, nothing is ever read and the
    job waits for ever (``--num-cpus 1`` did). So the actors' CPUs are shrunk to leave one
    free, down to 0 (sharing the cores) on a one-CPU cluster. GPU actors take no CPU.
    """
    if gpu:
        return actors or gpus, 0.0
    actors = actors or max(1, int((cpus - 1) // max(cpus_per_actor, 1)))
    return actors, max(0.0, min(cpus_per_actor, math.floor((cpus - 1) / actors * 1000) / 1000))


def featurize_split(members: list[str], catalog: Catalog | str, split: str, output: str, batch_size: int = 256,
                    actors: int | None = None, gpu: bool | None = None, cpus_per_actor: float = 1.0):
    """Write ``output/*.parquet`` for one split through an actor pool; returns the output path.

    ``gpu`` None means: use one GPU per actor when the cluster has GPUs.
    """
    import ray

    from fer_ray.runtime import cluster_capacity, init_ray, map_batches_on_actors, require_gpus

    init_ray()
    resources = cluster_capacity()
    if gpu is None:
        gpu = resources.get("GPU", 0) >= 1
    elif gpu:
        require_gpus(1)
    actors, cpus_per_actor = plan_actors(resources.get("CPU", 1), int(resources.get("GPU", 0)), gpu, actors,
                                         cpus_per_actor)
    ds = ray.data.read_parquet(str(Catalog.open(catalog).split_dir(split))).select_columns(["image", "label", "id"])
    ds = map_batches_on_actors(ds, MemberFeatures, max(1, actors),
                               fn_constructor_kwargs={"members": [str(m) for m in members],
                                                      "device": "cuda" if gpu else "cpu", "batch_size": batch_size},
                               batch_size=batch_size, num_gpus=1 if gpu else 0, num_cpus=cpus_per_actor,
                               batch_format="numpy")
    out = Path(output)
    # Ray Data appends new files to a folder: a rerun (after an interruption, or with other
    # members) would otherwise read every face twice, or mix two models' features.
    shutil.rmtree(out, ignore_errors=True)
    ds.write_parquet(str(out))
    return out


def featurize(members: list[str], catalog: Catalog | str, output: str, splits: tuple[str, ...] = ("train", "val", "test"),
              **kwargs) -> dict[str, Path]:
    """Featurize every requested split the catalog has into ``output/<split>/``."""
    catalog = Catalog.open(catalog)
    return {s: featurize_split(members, catalog, s, str(Path(output) / s), **kwargs) for s in splits if catalog.has(s)}


# ------------------------------------------------------------------ `fer-ray ensemble`


def run_ensemble(members: list[str], catalog: Catalog | str, run_dir: str, **settings) -> dict:
    """Featurize, fit the head, save the artifact, and report members / soft vote / stacked side by side.
    ``settings`` are ``EnsembleConfig``'s other fields (grid, batch_size, actors, gpu, overwrite).

    The run directory is claimed for these members, catalog and grid, and its ``result.json``
    keeps the returned summary (see ``fer_ray.rundir``)."""
    from fer_ray.evaluation.evaluate import evaluate_artifact
    from fer_ray.evaluation.metrics import classification_metrics, headline_figures
    from fer_ray.evaluation.report import comparison_table

    cfg = EnsembleConfig(members=members, catalog=str(catalog), run_dir=run_dir, **settings)
    catalog = Catalog.open(catalog).require("train", "val", why="the head is fitted on train, C chosen on val")
    records = [member_record(m) for m in members]
    member_paths = [r["path"] for r in records]
    if len(set(member_paths)) < len(member_paths):
        twice = sorted({p for p in member_paths if member_paths.count(p) > 1})
        raise FerRayError(f"--members names the same artifact more than once: {', '.join(twice)}")
    settings = {"members": member_paths, **catalog.run_settings, "grid": list(cfg.grid)}
    with open_run(run_dir, "ensemble", settings, overwrite=cfg.overwrite) as run:
        if run.done:
            return run.done
        out = run.claim()
        t0 = time.perf_counter()
        paths = featurize(member_paths, catalog, str(out / "features"), batch_size=cfg.batch_size,
                          actors=cfg.actors, gpu=cfg.gpu)
        feats = {s: read_features(str(p)) for s, p in paths.items()}
        counts = ", ".join(f"{s} {len(f['label'])}" for s, f in feats.items())
        log.info(f"ensemble: featurized {counts} in "
                 f"{time.perf_counter() - t0:.1f} s ({feats['train']['features'].shape[1]} features)")
        head, choice = choose_head(feats["train"], feats["val"], cfg.grid)
        widths = [r["feature_dim"] for r in records]
        artifact = save_ensemble(str(out / "artifact"), head, records, widths, choice, catalog)
        log.info(f"ensemble: C={choice['C']:g} chosen on val; artifact {artifact}")

        names = [f"member {i + 1}: {r['architecture']} ({Path(r['path']).parent.name}/{Path(r['path']).name})"
                 for i, r in enumerate(records)]
        # "evaluations": the stacked ensemble end to end; "soft_vote": its baseline, for reports.
        sections, summary = [], {"artifact": str(artifact), "head": choice, "splits": {}, "evaluations": {},
                                 "soft_vote": {}}
        for split in [s for s in ("val", "test") if s in feats]:
            f = feats[split]
            rows = [(n, classification_metrics(f["label"], f["probs"][:, i].argmax(axis=1)))
                    for i, n in enumerate(names)]
            summary["soft_vote"][split] = classification_metrics(f["label"], soft_vote(f["probs"]).argmax(axis=1))
            rows.append(("soft voting (mean of member probabilities)", summary["soft_vote"][split]))
            rows.append(("stacked ensemble (one-vs-rest logistic on concatenated features)",
                         classification_metrics(f["label"], head.scores(f["features"]).argmax(axis=1))))
            end_to_end = evaluate_artifact(str(artifact), catalog, split, str(out / f"eval-{split}"))
            note = " (C was chosen on this split)" if split == "val" else ""
            sections += [f"## {split}{note}", "", comparison_table(rows, catalog.protocol(split, "none")), "",
                         f"End to end through the Predictor on raw images, the stacked ensemble scores "
                         f"{end_to_end['accuracy']:.4f} (report in eval-{split}/).", ""]
            summary["splits"][split] = {name: headline_figures(m) for name, m in rows}
            summary["evaluations"][split] = end_to_end
            log.info(f"ensemble: {split} " + "; ".join(f"{n.split(' (')[0]} {m['accuracy']:.4f}" for n, m in rows))
        lines = ["# Ensemble: members, soft voting and the stacked ensemble", "",
                 f"Members: {len(records)}; features: {' + '.join(map(str, widths))} = {sum(widths)}; "
                 f"head: 7 one-vs-rest logistic regressions, C = {choice['C']:g} "
                 f"(val accuracy by C: {choice['val_accuracy_by_C']}).", ""] + sections
        (out / "report.md").write_text("\n".join(lines))
        return run.finish(summary)
