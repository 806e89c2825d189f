"""``fer-ray <stage>``: each stage is a thin call into the package's modules.

Errors the user can fix (missing input, bad layout, unknown names) print one line and exit
with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
from pathlib import Path

from fer_ray.data.catalog import CatalogError
from fer_ray.data.sources import SOURCES, SourceError
from fer_ray.data.splits import SPLIT_MODES
from fer_ray.runtime import Interrupted
from fer_ray.choices import (MODEL_NAMES, OPTIMIZERS, SCHEDULES, SVM_DEFAULT_LAMBDA as DEFAULT_LAMBDA,
                             SVM_LOSSES, SVM_SOLVERS, TTA_MODES)

USER_ERRORS = (SourceError, CatalogError, FileNotFoundError, ValueError)
CPUS_PER_WORKER = "CPUs per Train worker (default: the cluster's CPUs shared by the workers, at most a node's)"
OVERWRITE_RUN = "delete what --run-dir holds (another run, or this one with other settings) and start afresh"
VERBOSE = "also Ray's own logs and progress bars (default: fer-ray's progress lines and Ray's errors only)"


def _prepare(args) -> None:
    from fer_ray.data.catalog import audit
    from fer_ray.data.ingest import build_catalog
    from fer_ray.data.sources import KDEF_ANGLES, make_source

    if args.source != "kdef" and (args.angles or args.face_crop):  # they would be ignored
        raise ValueError(f"--angles and --face-crop apply to --source kdef, not --source {args.source}")
    if args.max_pixels is not None and args.source not in ("folders", "kdef"):
        raise ValueError(f"--max-pixels applies to image files (--source folders or kdef), not --source {args.source}")
    options = {}
    if args.source == "synthetic":
        options = {"count": args.count, "seed": args.seed}
    elif args.source == "kdef":
        angles = tuple(a.strip().upper() for a in args.angles.split(",")) if args.angles else KDEF_ANGLES
        options = {"angles": angles, "face_crop": args.face_crop}
    if args.max_pixels is not None and args.source in ("folders", "kdef"):
        options["max_pixels"] = args.max_pixels
    source = make_source(args.source, args.input, size=args.size, **options)
    manifest = build_catalog(source, args.output, split_mode=args.split, seed=args.seed,
                             overwrite=args.overwrite, num_cpus=args.num_cpus)
    print(audit(manifest))
    print(f"catalog written to {args.output} in {manifest['prepare_seconds']} s")


def _demo(args) -> None:
    from fer_ray.demo import run_demo
    from fer_ray.runtime import init_ray

    init_ray(args.num_cpus)
    run_demo(args.output, count=args.count, epochs=args.epochs)


def _pipeline(args) -> None:
    from fer_ray.pipeline import Pipeline, PipelineConfig, headline

    sizes = {}
    for item in args.input_sizes:
        model, _, size = item.partition("=")
        if not size.isdigit():
            raise ValueError(f"--input-sizes takes MODEL=PIXELS, got {item!r}")
        sizes[model] = int(size)
    cfg = PipelineConfig(storage=args.storage, work_dir=args.work_dir, source=args.source, input=args.input,
                         count=args.count, size=args.size, models=tuple(args.models), input_sizes=sizes,
                         epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, workers=args.workers,
                         gpu=args.gpu, cpus_per_worker=args.cpus_per_worker, svm_samples=args.svm_samples,
                         kdef=args.kdef, kdef_face_crop=not args.no_kdef_face_crop,
                         transfer_freeze=args.transfer_freeze, transfer_epochs=args.transfer_epochs,
                         score_input=args.score_input, seed=args.seed)
    summary = Pipeline(cfg).run()
    print(headline(summary))
    print(f"report: {summary['outputs']['report']}  (storage: {summary['storage']})")


def _recipe(args):
    from fer_ray.training.augment import Augment
    from fer_ray.training.loop import Recipe

    augment = Augment(flip=not args.no_flip, rotate_deg=args.rotate, scale=args.scale,
                      translate_px=args.translate, erase_p=args.erase_p)
    if args.no_augment:
        augment = Augment(flip=False, rotate_deg=0, scale=0, translate_px=0, erase_p=0)
    return Recipe(epochs=args.epochs, batch_size=args.batch_size, optimizer=args.optimizer, lr=args.lr,
                  momentum=args.momentum, weight_decay=args.weight_decay, schedule=args.schedule,
                  warmup_epochs=args.warmup_epochs, label_smoothing=args.label_smoothing,
                  augment=augment, amp=not args.no_amp, seed=args.seed)


def _train(args) -> None:
    from fer_ray.training.trainer import TrainConfig, train

    cfg = TrainConfig(catalog=args.catalog, run_dir=args.run_dir, model=args.model, input_size=args.input_size,
                      recipe=_recipe(args), workers=args.workers, gpu=args.gpu,
                      cpus_per_worker=args.cpus_per_worker, name=args.name,
                      checkpoint_every=args.checkpoint_every, max_failures=args.max_failures,
                      init_from=args.init_from, freeze=args.freeze, weights=args.weights, eval_tta=args.tta,
                      overwrite=args.overwrite)
    summary = train(cfg)
    print(f"artifact: {summary['artifact']}")


def _evaluate(args) -> None:
    from fer_ray.evaluation.evaluate import evaluate_artifact

    out = Path(args.output)
    if out.is_dir() and any(out.iterdir()) and not args.overwrite:
        raise ValueError(f"--output {out} is not empty (an earlier report?); use another folder, "
                         "or pass --overwrite to write over it")
    metrics = evaluate_artifact(_artifact(args), args.catalog, args.split, args.output, tta=args.tta,
                                device=args.device)
    print(f"{args.split}: accuracy {metrics['accuracy']:.4f}  macro F1 {metrics['macro']['f1']:.4f}  "
          f"({metrics['count']} images, TTA {args.tta}); report in {args.output}/report.md")


def _score(args) -> None:
    from fer_ray.inference.batch import score_folder

    score_folder(_artifact(args), args.input, args.output, faces=args.faces, batch_size=args.batch_size,
                 gpu=args.gpu, margin=args.margin, max_pixels=args.max_pixels, part_files=args.part_files,
                 actors=args.actors, num_cpus=args.num_cpus, overwrite=args.overwrite)


def _serve(args) -> None:
    from fer_ray.inference.serve import ServeConfig, run_server

    config = ServeConfig(artifact=_artifact(args), replicas=args.replicas, max_batch_size=args.max_batch_size,
                         batch_wait_timeout_s=args.batch_wait_ms / 1000, num_cpus=args.replica_cpus,
                         num_gpus=1 if args.gpu else 0, max_body_bytes=args.max_body_bytes,
                         max_pixels=args.max_pixels, max_files=args.max_files)
    run_server(config, host=args.host, port=args.port, num_cpus=args.num_cpus)


def _artifact(args) -> str:
    """--artifact, or the model that ships with fer-ray (the command says which it uses)."""
    from fer_ray.pretrained import artifact_or_default

    return artifact_or_default(args.artifact, log=lambda line: print(f"fer-ray {args.stage}: {line}", file=sys.stderr))


def _predict(args) -> None:
    import json

    from fer_ray.inference.predict import check_inputs, format_table, predict

    check_inputs(args.images)
    records = predict(args.images, faces=args.faces, artifact=_artifact(args), margin=args.margin, top=args.top)
    print(json.dumps(records, indent=2) if args.json else format_table(records))


def _baseline(args) -> None:
    from fer_ray.baseline.svm import run_baseline

    summary = run_baseline(args.catalog, args.run_dir, lam=args.lam, solver=args.solver, max_iter=args.max_iter,
                           loss=args.loss, overwrite=args.overwrite)
    print(f"artifact: {summary['artifact']}")


def _sweep(args) -> None:
    from fer_ray.tuning.sweeps import CnnSweep, SvmSweep, sweep_cnn, sweep_svm

    if args.kind == "svm":
        cfg = SvmSweep(catalog=args.catalog, run_dir=args.run_dir, samples=args.samples, lambda_min=args.lambda_min,
                       lambda_max=args.lambda_max, solver=args.solver, loss=args.loss, max_iter=args.max_iter,
                       concurrency=args.concurrency, seed=args.seed, overwrite=args.overwrite)
        run = sweep_svm
    else:
        fixed = {"batch_size": args.batch_size, "optimizer": args.optimizer, "schedule": args.schedule}
        if args.no_augment:
            fixed["augment"] = {"flip": False, "rotate_deg": 0, "scale": 0, "translate_px": 0, "erase_p": 0}
        cfg = CnnSweep(catalog=args.catalog, run_dir=args.run_dir, model=args.model, samples=args.samples,
                       epochs=args.epochs, lr_min=args.lr_min, lr_max=args.lr_max, wd_min=args.wd_min,
                       wd_max=args.wd_max, batch_sizes=tuple(args.batch_sizes), label_smoothing=args.label_smoothing,
                       recipe=fixed, gpu=args.gpu, cpus_per_worker=args.cpus_per_worker,
                       concurrency=args.concurrency, grace_period=args.grace_period, seed=args.seed,
                       overwrite=args.overwrite)
        run = sweep_cnn
    summary = run(cfg)
    print(f"best artifact: {summary['artifact']}")


def _ensemble(args) -> None:
    from fer_ray.ensemble.features import run_ensemble
    from fer_ray.ensemble.stack import C_GRID

    summary = run_ensemble(args.members, args.catalog, args.run_dir, grid=tuple(args.c_grid or C_GRID),
                           batch_size=args.batch_size, actors=args.actors, gpu=True if args.gpu else None,
                           overwrite=args.overwrite)
    print(f"artifact: {summary['artifact']}; report: {args.run_dir}/report.md")


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def _positive_ints(text: str) -> list[int]:
    return [_positive_int(v) for v in text.split(",") if v.strip()]


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 <= value < math.inf:
        raise argparse.ArgumentTypeError(f"must be a finite number, 0 or more, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = _non_negative_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be more than 0, got 0")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _add_recipe_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("recipe")
    g.add_argument("--epochs", type=_positive_int, default=30)
    g.add_argument("--batch-size", type=_positive_int, default=128, help="per worker")
    g.add_argument("--optimizer", choices=OPTIMIZERS, default="sgd", help="sgd = SGD with Nesterov momentum")
    g.add_argument("--lr", type=float, default=0.05, help="peak learning rate")
    g.add_argument("--momentum", type=float, default=0.9)
    g.add_argument("--weight-decay", type=float, default=5e-4)
    g.add_argument("--schedule", choices=SCHEDULES, default="onecycle")
    g.add_argument("--warmup-epochs", type=float, default=0.0, help="cosine schedule only")
    g.add_argument("--label-smoothing", type=float, default=0.1)
    g.add_argument("--no-flip", action="store_true", help="no horizontal flips")
    g.add_argument("--rotate", type=float, default=10.0, help="max rotation, degrees")
    g.add_argument("--scale", type=float, default=0.10, help="max zoom in/out, fraction")
    g.add_argument("--translate", type=float, default=4.0, help="max shift, pixels at 48 px")
    g.add_argument("--erase-p", type=float, default=0.0, help="random-erasing probability")
    g.add_argument("--no-augment", action="store_true", help="turn every augmentation off")
    g.add_argument("--no-amp", action="store_true", help="no bf16 autocast (on by default on CUDA and on CPUs with native bf16)")
    g.add_argument("--seed", type=int, default=0)


def _defaults(config_class) -> dict:
    """A dataclass config's field defaults, so a flag's default is the config's, not a copy."""
    return {f.name: f.default for f in dataclasses.fields(config_class) if f.default is not dataclasses.MISSING}


def build_parser() -> argparse.ArgumentParser:
    from fer_ray.pipeline import PipelineConfig

    parser = argparse.ArgumentParser(prog="fer-ray", description=__doc__.splitlines()[0])
    stages = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")

    p = stages.add_parser("prepare", help="read a source into a catalog (Parquet + manifest)")
    # No argparse choices: an unknown source is one clear error line like every other input problem.
    p.add_argument("--source", required=True, help=f"one of: {', '.join(SOURCES)}")
    p.add_argument("--input", help="CSV file or folder (not needed for synthetic)")
    p.add_argument("--output", required=True, help="catalog directory to write")
    p.add_argument("--size", type=_positive_int, default=48, help="image side in pixels (default 48)")
    p.add_argument("--split", choices=SPLIT_MODES, default=None,
                   help="source: the source's own split (default; KDEF: subject); random: the "
                        "paper's stratified 80/10/10; subject: identity-disjoint 80/10/10")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--count", type=_positive_int, default=3500, help="synthetic: number of faces")
    p.add_argument("--angles", help="KDEF: comma-separated angles to keep (FL,HL,S,HR,FR)")
    p.add_argument("--face-crop", action="store_true", help="KDEF: crop the largest detected face")
    p.add_argument("--max-pixels", type=_positive_int, default=None, help="reject images above this many pixels")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    p.add_argument("--num-cpus", type=_positive_int, default=None, help="local Ray only: CPUs to use")
    p.add_argument("--verbose", action="store_true", help=VERBOSE)
    p.set_defaults(func=_prepare)

    p = stages.add_parser("demo", help="the whole pipeline on synthetic faces and a local Ray (~3 min on 2 CPUs)")
    p.add_argument("--output", default="demo-output", help="where every output goes (rerun to resume)")
    p.add_argument("--count", type=_positive_int, default=3500, help="synthetic faces")
    p.add_argument("--epochs", type=_positive_int, default=8, help="epochs per small CNN")
    p.add_argument("--num-cpus", type=_positive_int, default=None, help="local Ray only: CPUs to use")
    p.add_argument("--verbose", action="store_true", help=VERBOSE)
    p.set_defaults(func=_demo)

    d = _defaults(PipelineConfig)  # one place for the pipeline's defaults: its config
    p = stages.add_parser("pipeline", help="the paper end to end: prepare, SVM sweep, CNNs, ensemble, report, "
                                           "transfer to KDEF, scoring")
    p.add_argument("--config", help="YAML file whose keys are any of these flags (dashes or underscores)")
    p.add_argument("--storage", required=True, help="output directory, or a URI (s3://...) results are uploaded to")
    p.add_argument("--work-dir", help="with a URI --storage (required then): shared directory stages write to; "
                                        "a rerun with the same one resumes")
    p.add_argument("--source", choices=SOURCES, default=d["source"])
    p.add_argument("--input", help="the source's CSV file or folder")
    p.add_argument("--count", type=_positive_int, default=d["count"], help="synthetic faces")
    p.add_argument("--size", type=_positive_int, default=d["size"])
    p.add_argument("--models", nargs="+", default=list(d["models"]), choices=sorted(MODEL_NAMES),
                   help="CNN members of the ensemble (default: two CPU-efficient ones; the paper's are vgg16_bn resnet50)")
    p.add_argument("--input-sizes", nargs="*", default=[], metavar="MODEL=PIXELS",
                   help="network input size per model, e.g. resnet50=192 (the paper upscaled ResNet inputs)")
    p.add_argument("--epochs", type=_positive_int, default=d["epochs"])
    p.add_argument("--batch-size", type=_positive_int, default=d["batch_size"])
    p.add_argument("--lr", type=float, default=d["lr"])
    p.add_argument("--workers", type=_positive_int, default=d["workers"])
    p.add_argument("--gpu", action="store_true")
    p.add_argument("--cpus-per-worker", type=_positive_float, default=None, help=CPUS_PER_WORKER)
    p.add_argument("--svm-samples", type=_positive_int, default=d["svm_samples"])
    p.add_argument("--kdef", help="KDEF folder: fine-tune the best CNN on it (transfer learning)")
    p.add_argument("--no-kdef-face-crop", action="store_true")
    p.add_argument("--transfer-freeze", type=int, default=d["transfer_freeze"])
    p.add_argument("--transfer-epochs", type=_positive_int, default=d["transfer_epochs"])
    p.add_argument("--score-input", help="folder of photos to score with the ensemble at the end")
    p.add_argument("--seed", type=int, default=d["seed"])
    p.add_argument("--verbose", action="store_true", help=VERBOSE)
    p.set_defaults(func=_pipeline)

    p = stages.add_parser("train", help="train a CNN with Ray Train (also transfer learning)")
    p.add_argument("--config", help="YAML file whose keys are any of these flags (dashes or underscores)")
    p.add_argument("--catalog", required=True)
    p.add_argument("--model", choices=sorted(MODEL_NAMES), default=None,
                   help="architecture (default small_cnn; with --init-from, the artifact's)")
    p.add_argument("--run-dir", required=True, help="checkpoints, artifact, metrics and reports go here")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_RUN)
    p.add_argument("--name", default="train", help="run name; rerunning the same run dir and name resumes")
    p.add_argument("--input-size", type=_positive_int, default=None,
                   help="network input side (default: the catalog's; e.g. 192 to upscale for resnet50)")
    p.add_argument("--workers", type=_positive_int, default=1, help="Ray Train workers (DDP)")
    p.add_argument("--gpu", action="store_true", help="one GPU per worker (NCCL, bf16, channels_last)")
    p.add_argument("--cpus-per-worker", type=_positive_float, default=None, help=CPUS_PER_WORKER)
    p.add_argument("--checkpoint-every", type=_positive_int, default=1, help="epochs between checkpoints")
    p.add_argument("--max-failures", type=int, default=1, help="worker failures retried from the last checkpoint")
    p.add_argument("--init-from", help="artifact to fine-tune (transfer learning); sets model, input size, normalisation")
    p.add_argument("--freeze", type=int, default=0,
                   help="with --init-from: freeze the first N stages, or all but the last K with -K")
    p.add_argument("--weights", help="local weights file to start from (safetensors or a state dict)")
    p.add_argument("--tta", choices=TTA_MODES, default="none", help="test-time augmentation for the final evaluation")
    _add_recipe_args(p)
    p.add_argument("--verbose", action="store_true", help=VERBOSE)
    p.set_defaults(func=_train)

    p = stages.add_parser("evaluate", help="evaluate an artifact on a catalog split")
    p.add_argument("--artifact", help="artifact folder (default: the model that ships with fer-ray)")
    p.add_argument("--catalog", required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--output", required=True, help="directory for metrics.json, report.md and plots")
    p.add_argument("--overwrite", action="store_true", help="write over an earlier report in --output")
    p.add_argument("--tta", choices=TTA_MODES, default="none")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.set_defaults(func=_evaluate)

    p = stages.add_parser("score", help="score every image in a folder or glob with Ray Data (resumable)")
    p.add_argument("--artifact", help="artifact folder (default: the model that ships with fer-ray)")
    p.add_argument("--input", required=True, help="folder (searched recursively), image file or glob")
    p.add_argument("--output", required=True, help="OUT.parquet or OUT.csv; finished parts are kept in OUT.parts/")
    p.add_argument("--faces", choices=("all", "largest", "none"), default="all",
                   help="all/largest: detect faces in photos; none: images are already face crops")
    p.add_argument("--batch-size", type=_positive_int, default=256, help="faces per model call")
    p.add_argument("--gpu", action="store_true", help="one GPU per model actor")
    p.add_argument("--actors", type=_positive_int, default=None, help="actors (default: one per GPU with --gpu, else one per CPU)")
    p.add_argument("--margin", type=_non_negative_float, default=0.2, help="face box enlargement on each side")
    p.add_argument("--max-pixels", type=_positive_int, default=40_000_000, help="images above this are error rows")
    p.add_argument("--part-files", type=_positive_int, default=1000, help="write a resumable part once this many files are complete")
    p.add_argument("--overwrite", action="store_true", help="discard earlier results for this output")
    p.add_argument("--num-cpus", type=_positive_int, default=None, help="local Ray only: CPUs to use")
    p.add_argument("--verbose", action="store_true", help=VERBOSE)
    p.set_defaults(func=_score)

    p = stages.add_parser("serve", help="serve an artifact over HTTP with Ray Serve (batched)")
    p.add_argument("--artifact", help="artifact folder (default: the model that ships with fer-ray)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--replicas", type=_positive_int, default=1)
    p.add_argument("--replica-cpus", type=_non_negative_float, default=1.0, help="CPUs per replica")
    p.add_argument("--gpu", action="store_true", help="one GPU per replica")
    p.add_argument("--max-batch-size", type=_positive_int, default=16, help="requests per forward pass")
    p.add_argument("--batch-wait-ms", type=_non_negative_float, default=10.0, help="how long a batch waits to fill")
    p.add_argument("--max-body-bytes", type=_positive_int, default=10 * 1024 * 1024)
    p.add_argument("--max-pixels", type=_positive_int, default=25_000_000)
    p.add_argument("--max-files", type=_positive_int, default=32, help="images per /predict/batch request")
    p.add_argument("--num-cpus", type=_positive_int, default=None, help="local Ray only: CPUs to use")
    p.add_argument("--verbose", action="store_true", help=VERBOSE)
    p.set_defaults(func=_serve)

    p = stages.add_parser("predict", help="emotions of the faces in a few images, no Ray (table, or --json)")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    p.add_argument("--artifact", help="artifact folder (default: the model that ships with fer-ray)")
    p.add_argument("--faces", choices=("all", "largest", "none"), default="all",
                   help="all/largest: detect faces; none: each image is already a face crop")
    p.add_argument("--margin", type=_non_negative_float, default=0.2, help="face box enlargement on each side")
    p.add_argument("--top", type=_positive_int, default=3, help="likeliest emotions listed per face")
    p.add_argument("--json", action="store_true", help="JSON records instead of a table")
    p.set_defaults(func=_predict)

    p = stages.add_parser("baseline", help="the paper's linear SVM (hinge loss, L2 lambda) on standardised pixels")
    p.add_argument("--catalog", required=True)
    p.add_argument("--run-dir", required=True, help="artifact, metrics.json and val/test reports go here")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_RUN)
    p.add_argument("--lambda", dest="lam", type=float, default=DEFAULT_LAMBDA,
                   help="L2 weight in (1/N) sum hinge + lambda ||W||^2 (default %(default)s)")
    p.add_argument("--solver", choices=SVM_SOLVERS, default="liblinear",
                   help="liblinear: exact LinearSVC (default); sgd: SGDClassifier, faster, less accurate")
    p.add_argument("--loss", choices=SVM_LOSSES, default="hinge",
                   help="hinge: the paper's (default); squared_hinge: LinearSVC's default, primal solver")
    p.add_argument("--max-iter", type=_positive_int, default=1000)
    p.set_defaults(func=_baseline)

    p = stages.add_parser("sweep", help="Ray Tune sweeps: svm (lambda) or cnn (lr, weight decay; ASHA); resumable")
    kinds = p.add_subparsers(dest="kind", required=True, metavar="KIND")
    for kind, text in (("svm", "SVM lambda, log-uniform, chosen by val accuracy"),
                       ("cnn", "CNN learning rate and weight decay, ASHA early stopping")):
        k = kinds.add_parser(kind, help=text)
        k.add_argument("--catalog", required=True)
        k.add_argument("--run-dir", required=True, help="rerunning with the same run dir resumes the sweep")
        k.add_argument("--overwrite", action="store_true", help=OVERWRITE_RUN)
        k.add_argument("--samples", type=_positive_int, default=6 if kind == "svm" else 4, help="trials")
        k.add_argument("--concurrency", type=_positive_int, default=None, help="trials at a time (default: what the cluster fits)")
        k.add_argument("--seed", type=int, default=0, help="seed of the random search")
        k.add_argument("--verbose", action="store_true", help=VERBOSE)
        k.set_defaults(func=_sweep)
        if kind == "svm":
            k.add_argument("--lambda-min", type=float, default=0.3)
            k.add_argument("--lambda-max", type=float, default=3.0)
            k.add_argument("--solver", choices=SVM_SOLVERS, default="liblinear")
            k.add_argument("--loss", choices=SVM_LOSSES, default="hinge")
            k.add_argument("--max-iter", type=_positive_int, default=1000)
            continue
        k.add_argument("--model", choices=sorted(MODEL_NAMES), default="small_cnn")
        k.add_argument("--epochs", type=_positive_int, default=6, help="epochs per trial (ASHA's max_t)")
        k.add_argument("--gpu", action="store_true", help="one GPU per trial")
        k.add_argument("--cpus-per-worker", type=_positive_float, default=1.0)
        k.add_argument("--lr-min", type=float, default=0.005)
        k.add_argument("--lr-max", type=float, default=0.2)
        k.add_argument("--wd-min", type=float, default=1e-5)
        k.add_argument("--wd-max", type=float, default=1e-3)
        k.add_argument("--batch-sizes", type=_positive_ints, default=[],
                       help="also tune the batch size over these, e.g. 64,128,256")
        k.add_argument("--label-smoothing", type=_floats, default=None, metavar="MIN,MAX",
                       help="also tune label smoothing uniformly in this range, e.g. 0,0.2")
        k.add_argument("--grace-period", type=_positive_int, default=1, help="ASHA: epochs before a trial can be stopped")
        k.add_argument("--batch-size", type=_positive_int, default=128, help="fixed batch size (when not tuned)")
        k.add_argument("--optimizer", choices=OPTIMIZERS, default="sgd")
        k.add_argument("--schedule", choices=SCHEDULES, default="onecycle")
        k.add_argument("--no-augment", action="store_true")

    p = stages.add_parser("ensemble", help="the paper's stacked ensemble of CNN artifacts (plus soft voting)")
    p.add_argument("--members", nargs="+", required=True, help="two or more CNN artifact directories")
    p.add_argument("--catalog", required=True)
    p.add_argument("--run-dir", required=True, help="features, artifact, report.md and reports go here")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_RUN)
    p.add_argument("--c-grid", type=_floats, default=None,
                   help="inverse penalties tried on val, comma-separated (default 0.001,0.01,0.1,1,10)")
    p.add_argument("--batch-size", type=_positive_int, default=256, help="faces per featurizer batch")
    p.add_argument("--actors", type=_positive_int, default=None, help="featurizer actors (default: GPUs, or CPUs - 1)")
    p.add_argument("--gpu", action="store_true", help="one GPU per featurizer actor (default: when the cluster has GPUs)")
    p.add_argument("--verbose", action="store_true", help=VERBOSE)
    p.set_defaults(func=_ensemble)
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse flags; ``--config FILE.yaml`` supplies values that explicit flags override.

    The YAML is read before the real parse, so it can also supply required flags.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    config = _config_file(argv)
    if config and argv and not argv[0].startswith("-"):
        sub = parser._subparsers._group_actions[0].choices.get(argv[0])
        if sub is not None:
            _apply_config(sub, config)
    return parser.parse_args(argv)


def _config_file(argv: list[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
    return None


def _apply_config(sub: argparse.ArgumentParser, path: str) -> None:
    import yaml

    try:
        with open(path) as fh:
            values = yaml.safe_load(fh) or {}
    except (OSError, yaml.YAMLError) as exc:
        sub.error(f"cannot read --config {path}: {exc}")
    if not isinstance(values, dict):
        sub.error(f"{path} must hold a mapping of flag names to values")
    values = {str(k).replace("-", "_"): v for k, v in values.items()}
    # A key is a flag's name (`lambda`) or its destination (`lam`), as the help texts show the former.
    actions = {name: a for a in sub._actions if not isinstance(a, argparse._HelpAction)
               for name in [a.dest] + [o[2:].replace("-", "_") for o in a.option_strings if o.startswith("--")]}
    unknown = sorted(set(values) - set(actions))
    if unknown:
        sub.error(f"unknown keys in {path}: {unknown}")
    for key in values:
        actions[key].required = False
    sub.set_defaults(**{actions[k].dest: _config_value(sub, path, actions[k], v)
                        for k, v in values.items() if actions[k].dest != "config"})


def _config_value(sub: argparse.ArgumentParser, path: str, action: argparse.Action, value):
    """A YAML value parsed as the flag's own text would be. argparse checks neither types nor
    choices of defaults, so without this ``gpu: "false"`` switched --gpu on, ``epochs: 2.5``
    went through, and a bad ``tta`` was only refused after the whole training run."""
    flag = f"{action.option_strings[0] if action.option_strings else action.dest} (in {path})"
    if value is None:  # `key:` with no value: the flag's default
        return action.default
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        if not isinstance(value, bool):
            sub.error(f"{flag} must be true or false, got {value!r}")
        return value
    many = action.nargs in ("+", "*")
    if isinstance(value, list) and not many:  # MIN,MAX flags: a YAML list reads as the comma list
        value = ",".join(map(str, value))
    items = value if isinstance(value, list) else [value]
    parsed = []
    for item in items:
        if isinstance(item, (dict, list)):
            sub.error(f"{flag} takes {'a list of values' if many else 'one value'}, got {value!r}")
        try:
            item = action.type(str(item)) if action.type else str(item)
        except (argparse.ArgumentTypeError, ValueError, TypeError) as exc:
            sub.error(f"{flag}: invalid value {item!r} ({exc})")
        if action.choices is not None and item not in action.choices:
            sub.error(f"{flag}: {item!r} is not one of {', '.join(map(str, action.choices))}")
        parsed.append(item)
    return parsed if many else parsed[0]


def _check_output_folders(args) -> None:
    """A folder to write whose path runs into an existing file, or whose nearest existing folder
    cannot be written (a read-only mount, an immutable folder): one error line before any work,
    not an error once the work is done."""
    folders = [getattr(args, "run_dir", None), getattr(args, "work_dir", None)]
    if args.stage in ("evaluate", "demo"):
        folders.append(args.output)
    if args.stage == "prepare":  # the catalog is built beside --output, then put in its place
        folders.append(str(Path(args.output).parent))
        if Path(args.output).is_dir():
            folders.append(args.output)
    if args.stage == "pipeline":
        from fer_ray.pipeline import is_uri

        if not is_uri(args.storage):
            folders.append(args.storage)
    if args.stage == "score":
        folders.append(str(Path(args.output).parent))
    for folder in filter(None, folders):
        for path in (Path(folder), *Path(folder).parents):
            if path.exists():
                if not path.is_dir():
                    raise ValueError(f"{folder}: {path} is a file, not a folder")
                if not os.access(path, os.W_OK | os.X_OK):
                    raise ValueError(f"{folder}: cannot write in {path} (read-only, or another user's)")
                break


def main(argv: list[str] | None = None) -> int:
    import fer_ray.runtime

    args = parse_args(argv)
    fer_ray.runtime.VERBOSE = getattr(args, "verbose", False)  # read when (if) the stage starts Ray
    try:
        _check_output_folders(args)
        args.func(args)
    except USER_ERRORS as exc:
        print(f"fer-ray {args.stage}: error: {exc}", file=sys.stderr)
        return 2
    except Interrupted as exc:  # e.g. Ctrl+C in a sweep, alone or inside the pipeline
        print(f"fer-ray {args.stage}: {exc}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        hint = "; rerun the same command to score only the files not yet scored" if args.stage == "score" else ""
        print(f"fer-ray {args.stage}: interrupted (Ctrl+C){hint}", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
