"""``fer-ray <stage>``: each stage is a thin call into the package's modules.

Refusals the user can act on (``FerRayError``: a missing input, a bad flag, a damaged artifact)
print one line and exit with status 2. Anything else is a bug: its traceback is printed, then
one line asking for a report, and the exit status is 1.
"""

from __future__ import annotations

import argparse
import errno
import os
import signal
import sys
import traceback
from pathlib import Path

from pydantic import ValidationError

from fer_ray.demo import DemoConfig
from fer_ray.baseline.config import BaselineConfig
from fer_ray.data.config import PrepareConfig
from fer_ray.ensemble.config import EnsembleConfig
from fer_ray.errors import FerRayError
from fer_ray.evaluation.config import EvaluateConfig
from fer_ray.flags import AMOUNT, add_flags, fields, one_line
from fer_ray.inference.config import PredictConfig, ScoreConfig, ServeConfig, ServerOptions
from fer_ray.pipeline import PipelineConfig
from fer_ray.runtime import Interrupted, Terminated
from fer_ray.training.config import NO_AUGMENT, Augment, Recipe, TrainConfig
from fer_ray.tuning.config import CnnSweep, SvmSweep

# The flags generated from each config's fields (fer_ray.flags): all of them but those named.
PREPARE_FLAGS = fields(PrepareConfig)
TRAIN_FLAGS = fields(TrainConfig, exclude=("recipe", "fault_epoch"))  # the recipe has its own; a testing aid
RECIPE_FLAGS = fields(Recipe, exclude=("augment", "channels_last", "eval_batch_size"))
AUGMENT_FLAGS = fields(Augment, exclude=("erase_area",))
PIPELINE_FLAGS = fields(PipelineConfig, exclude=("input_sizes", "svm_lambda", "ensemble_batch_size"))  # sizes: below
SWEEP_FLAGS = {"svm": fields(SvmSweep), "cnn": fields(CnnSweep, exclude=("reduction_factor", "recipe"))}
BASELINE_FLAGS = fields(BaselineConfig)
ENSEMBLE_FLAGS = fields(EnsembleConfig, exclude=("gpu",))  # --gpu forces GPUs; unset, the cluster decides
SCORE_FLAGS = fields(ScoreConfig, exclude=("artifact",))  # --artifact may be omitted: the shipped model
SERVE_FLAGS = ("replicas", "num_cpus", "max_batch_size", "max_queued_requests", "max_body_bytes", "max_pixels",
               "max_files", "detector", "small_faces", "margin", "tta")  # the rest: below
ARTIFACT = "artifact folder (default: the model that ships with fer-ray)"  # score, serve, evaluate, predict
VERBOSE = "also Ray's own logs and progress bars (default: fer-ray's progress lines and Ray's errors only)"


def _values(args, names) -> dict:
    """The parsed values of a config's flags, by field name: what the config is built from."""
    return {name: getattr(args, name) for name in names}


def _prepare(args) -> None:
    from fer_ray.data.catalog import audit
    from fer_ray.data.ingest import build_catalog
    from fer_ray.data.sources import make_source

    cfg = PrepareConfig(**_values(args, PREPARE_FLAGS))
    source = make_source(cfg.source, cfg.input, size=cfg.size, **cfg.source_options())
    manifest = build_catalog(source, cfg.output, split_mode=cfg.split, seed=cfg.seed,
                             overwrite=cfg.overwrite, num_cpus=cfg.num_cpus)
    print(audit(manifest))
    print(f"catalog written to {cfg.output} in {manifest['prepare_seconds']} s")


def _demo(args) -> None:
    from fer_ray.demo import run_demo

    run_demo(**_values(args, fields(DemoConfig)))


def _pipeline(args) -> None:
    from fer_ray.pipeline import Pipeline, headline

    sizes = {}
    for item in args.input_sizes:
        model, _, size = item.partition("=")
        if not size.isdigit():
            raise FerRayError(f"--input-sizes takes MODEL=PIXELS, got {item!r}")
        sizes[model] = int(size)
    cfg = PipelineConfig(**_values(args, PIPELINE_FLAGS), input_sizes=sizes)
    summary = Pipeline(cfg).run()
    print(headline(summary))
    print(f"report: {summary['outputs']['report']}  (storage: {summary['storage']})")


def _recipe(args):
    augment = NO_AUGMENT if args.no_augment else Augment(**_values(args, AUGMENT_FLAGS))
    return Recipe(**_values(args, RECIPE_FLAGS), augment=augment)


def _train(args) -> None:
    from fer_ray.training.trainer import train

    summary = train(TrainConfig(**_values(args, TRAIN_FLAGS), recipe=_recipe(args)))
    print(f"artifact: {summary['artifact']}")


def _evaluate(args) -> None:
    from fer_ray.evaluation.evaluate import evaluate_artifact

    cfg = EvaluateConfig(**_values(args, fields(EvaluateConfig)))
    out = Path(cfg.output)
    if out.is_dir() and any(out.iterdir()) and not cfg.overwrite:
        raise FerRayError(f"--output {out} is not empty (an earlier report?); use another folder, "
                          "or pass --overwrite to write over it")
    metrics = evaluate_artifact(_artifact(args), cfg.catalog, cfg.split, cfg.output, tta=cfg.tta, device=cfg.device)
    print(f"{cfg.split}: accuracy {metrics['accuracy']:.4f}  macro F1 {metrics['macro']['f1']:.4f}  "
          f"({metrics['count']} images, TTA {cfg.tta}); report in {cfg.output}/report.md")


def _score(args) -> None:
    from fer_ray.inference.batch import score_folder

    score_folder(_artifact(args), **_values(args, SCORE_FLAGS))


def _serve(args) -> None:
    from fer_ray.inference.serve import run_server

    config = ServeConfig(artifact=_artifact(args), **_values(args, SERVE_FLAGS),
                         batch_wait_timeout_s=args.batch_wait_ms / 1000, num_gpus=1 if args.gpu else 0)
    run_server(config, ServerOptions(**_values(args, fields(ServerOptions))))


def _artifact(args) -> str:
    """--artifact, or the model that ships with fer-ray (the command says which it uses)."""
    from fer_ray.pretrained import artifact_or_default

    return artifact_or_default(args.artifact, log=lambda line: print(f"fer-ray {args.stage}: {line}", file=sys.stderr))


def _predict(args) -> None:
    import json

    from fer_ray.inference.predict import check_inputs, format_table, predict

    check_inputs(args.images)
    records = predict(args.images, artifact=_artifact(args), **_values(args, fields(PredictConfig)))
    print(json.dumps(records, indent=2) if args.json else format_table(records))


def _baseline(args) -> None:
    from fer_ray.baseline.svm import run_baseline

    summary = run_baseline(**_values(args, BASELINE_FLAGS))
    print(f"artifact: {summary['artifact']}")


def _sweep(args) -> None:
    from fer_ray.tuning.sweeps import sweep_cnn, sweep_svm

    settings = _values(args, SWEEP_FLAGS[args.kind])
    if args.kind == "svm":
        summary = sweep_svm(SvmSweep(**settings))
    else:
        fixed = {"batch_size": args.batch_size, "optimizer": args.optimizer, "schedule": args.schedule}
        if args.no_augment:
            fixed["augment"] = NO_AUGMENT.model_dump()
        summary = sweep_cnn(CnnSweep(**settings, recipe=fixed))
    print(f"best artifact: {summary['artifact']}")


def _ensemble(args) -> None:
    from fer_ray.ensemble.features import run_ensemble

    summary = run_ensemble(**_values(args, ENSEMBLE_FLAGS), gpu=True if args.gpu else None)
    print(f"artifact: {summary['artifact']}; report: {args.run_dir}/report.md")


def _add_recipe_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("recipe")
    add_flags(g, Recipe, RECIPE_FLAGS)
    add_flags(g, Augment, AUGMENT_FLAGS)
    g.add_argument("--no-augment", action="store_true", help="turn every augmentation off")


class StageParser(argparse.ArgumentParser):
    """An argparse parser that keeps the flags added to it (``--config`` maps YAML keys onto
    them), in its argument groups too; the stages' parsers are of this class as well."""

    def __init__(self, *args, **kwargs):
        self.flags: list[argparse.Action] = []  # before argparse adds --help through add_argument
        super().__init__(*args, **kwargs)

    def add_argument(self, *args, **kwargs) -> argparse.Action:
        self.flags.append(super().add_argument(*args, **kwargs))
        return self.flags[-1]

    def add_argument_group(self, *args, **kwargs):
        group = super().add_argument_group(*args, **kwargs)
        add = group.add_argument

        def add_and_keep(*a, **k) -> argparse.Action:
            self.flags.append(add(*a, **k))
            return self.flags[-1]

        group.add_argument = add_and_keep
        return group


def build_parser() -> argparse.ArgumentParser:
    parser = StageParser(prog="fer-ray", description=__doc__.splitlines()[0])
    stages = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")
    parser.stages = stages.choices  # each stage's own parser, by name (for --config)

    p = stages.add_parser("prepare", help="read a source into a catalog (Parquet + manifest)")
    add_flags(p, PrepareConfig, PREPARE_FLAGS)
    p.add_argument("--verbose", action="store_true", help=VERBOSE)
    p.set_defaults(func=_prepare)

    p = stages.add_parser("demo", help="the whole pipeline on synthetic faces and a local Ray (~3 min on 2 CPUs)")
    add_flags(p, DemoConfig, fields(DemoConfig))
    p.add_argument("--verbose", action="store_true", help=VERBOSE)
    p.set_defaults(func=_demo)

    p = stages.add_parser("pipeline", help="the paper end to end: prepare, SVM sweep, CNNs, ensemble, report, "
                                           "transfer to KDEF, scoring")
    p.add_argument("--config", help="YAML file whose keys are any of these flags (dashes or underscores)")
    add_flags(p, PipelineConfig, PIPELINE_FLAGS)
    p.add_argument("--input-sizes", nargs="*", default=[], metavar="MODEL=PIXELS",
                   help="network input size per model, e.g. resnet50=192 (the paper upscaled ResNet inputs)")
    p.add_argument("--verbose", action="store_true", help=VERBOSE)
    p.set_defaults(func=_pipeline)

    p = stages.add_parser("train", help="train a CNN with Ray Train (also transfer learning)")
    p.add_argument("--config", help="YAML file whose keys are any of these flags (dashes or underscores)")
    add_flags(p, TrainConfig, TRAIN_FLAGS)
    _add_recipe_args(p)
    p.add_argument("--verbose", action="store_true", help=VERBOSE)
    p.set_defaults(func=_train)

    p = stages.add_parser("evaluate", help="evaluate an artifact on a catalog split")
    p.add_argument("--artifact", help=ARTIFACT)
    add_flags(p, EvaluateConfig, fields(EvaluateConfig))
    p.set_defaults(func=_evaluate)

    p = stages.add_parser("score", help="score every image in a folder or glob with Ray Data (resumable)")
    p.add_argument("--artifact", help=ARTIFACT)
    add_flags(p, ScoreConfig, SCORE_FLAGS)
    p.add_argument("--verbose", action="store_true", help=VERBOSE)
    p.set_defaults(func=_score)

    p = stages.add_parser("serve", help="serve an artifact over HTTP with Ray Serve (batched)")
    p.add_argument("--artifact", help=ARTIFACT)
    add_flags(p, ServerOptions, fields(ServerOptions))
    add_flags(p, ServeConfig, SERVE_FLAGS)
    wait = ServeConfig.model_fields["batch_wait_timeout_s"]
    p.add_argument("--batch-wait-ms", type=AMOUNT, default=wait.default * 1000,
                   help=f"{wait.description}, ms (default %(default)s)")
    p.add_argument("--gpu", action="store_true", help="one GPU per replica")
    p.add_argument("--verbose", action="store_true", help=VERBOSE)
    p.set_defaults(func=_serve)

    p = stages.add_parser("predict", help="emotions of the faces in a few images, no Ray (table, or --json)")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    p.add_argument("--artifact", help=ARTIFACT)
    add_flags(p, PredictConfig, fields(PredictConfig))
    p.add_argument("--json", action="store_true", help="JSON records instead of a table")
    p.set_defaults(func=_predict)

    p = stages.add_parser("baseline", help="the paper's linear SVM (hinge loss, L2 lambda) on standardised pixels")
    add_flags(p, BaselineConfig, BASELINE_FLAGS)
    p.set_defaults(func=_baseline)

    p = stages.add_parser("sweep", help="Ray Tune sweeps: svm (lambda) or cnn (lr, weight decay; ASHA); resumable")
    kinds = p.add_subparsers(dest="kind", required=True, metavar="KIND")
    for kind, config in (("svm", SvmSweep), ("cnn", CnnSweep)):
        k = kinds.add_parser(kind, help=config.__doc__.splitlines()[0])
        add_flags(k, config, SWEEP_FLAGS[kind])
        if kind == "cnn":
            add_flags(k, Recipe, ("batch_size", "optimizer", "schedule"))  # fixed (the batch size when not tuned)
            k.add_argument("--no-augment", action="store_true", help="turn every augmentation off")
        k.add_argument("--verbose", action="store_true", help=VERBOSE)
        k.set_defaults(func=_sweep)

    p = stages.add_parser("ensemble", help="the paper's stacked ensemble of CNN artifacts (plus soft voting)")
    add_flags(p, EnsembleConfig, ENSEMBLE_FLAGS)
    p.add_argument("--gpu", action="store_true", help=EnsembleConfig.model_fields["gpu"].description)
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
        sub = parser.stages.get(argv[0])
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


def _apply_config(sub: StageParser, path: str) -> None:
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
    actions = {name: a for a in sub.flags if a.dest != "help"
               for name in [a.dest] + [o[2:].replace("-", "_") for o in a.option_strings if o.startswith("--")]}
    unknown = sorted(set(values) - set(actions))
    if unknown:
        sub.error(f"unknown keys in {path}: {unknown}")
    for key in values:
        actions[key].required = False
    sub.set_defaults(**{actions[k].dest: _config_value(sub, path, actions[k], v, by_flag=k != actions[k].dest)
                        for k, v in values.items() if actions[k].dest != "config"})


def _config_value(sub: argparse.ArgumentParser, path: str, action: argparse.Action, value, by_flag: bool):
    """A YAML value parsed as the flag's own text would be. argparse checks neither types nor
    choices of defaults, so without this ``gpu: "false"`` switched --gpu on, ``epochs: 2.5``
    went through, and a bad ``tta`` was only refused after the whole training run. A switch set by
    its flag's name means what the flag means: ``no_flip: true`` stores flip = False."""
    flag = f"{action.option_strings[0] if action.option_strings else action.dest} (in {path})"
    if value is None:  # `key:` with no value: the flag's default
        return action.default
    if action.nargs == 0:  # a switch (store_true, or store_false for a --no-NAME flag)
        if not isinstance(value, bool):
            sub.error(f"{flag} must be true or false, got {value!r}")
        return value != (by_flag and action.const is False)
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
                    raise FerRayError(f"{folder}: {path} is a file, not a folder")
                if not os.access(path, os.W_OK | os.X_OK):
                    raise FerRayError(f"{folder}: cannot write in {path} (read-only, or another user's)")
                break


# What to do after a stop part-way, by stage: every stage that writes a run directory keeps
# its finished work (fer_ray.rundir) and a rerun of the same command continues from there.
RESUME = {"score": "rerun the same command to score only the files not yet scored"} | {
    stage: "rerun the same command to resume (finished work is kept)"
    for stage in ("demo", "pipeline", "train", "sweep", "baseline", "ensemble")}
FULL_DISK = (errno.ENOSPC, errno.EDQUOT)


def _answer(exc: BaseException, stage: str) -> tuple[int, str]:
    """The exit status and the one line for an exception that ended a stage (status 1 with no
    line: a bug, whose traceback the caller prints)."""
    hint = RESUME.get(stage, "rerun the same command")
    if isinstance(exc, ValidationError):  # a config's rule that ties flags together
        return 2, f"error: {one_line(exc)}"
    if isinstance(exc, FerRayError):
        return 2, f"error: {exc}"
    if isinstance(exc, Interrupted):  # e.g. Ctrl+C in a sweep, alone or inside the pipeline
        return 130, str(exc)
    if isinstance(exc, Terminated):
        return 143, f"terminated (SIGTERM); {hint}"
    if isinstance(exc, KeyboardInterrupt):
        return 130, f"interrupted (Ctrl+C); {hint}"
    cause = getattr(exc, "cause", None) or exc  # a Ray task's error wraps the worker's exception
    if isinstance(cause, OSError) and cause.errno in FULL_DISK:
        where = f" writing {cause.filename}" if cause.filename else ""
        return 1, f"error: no space left on the device{where}; free some space, then {hint}"
    ray_exceptions = sys.modules.get("ray.exceptions")  # loaded if the stage used Ray
    if ray_exceptions and isinstance(exc, (ray_exceptions.ActorDiedError, ray_exceptions.WorkerCrashedError,
                                           ray_exceptions.NodeDiedError, ray_exceptions.ObjectLostError)):
        reason = str(exc).strip().splitlines()[0]
        return 1, (f"error: a Ray worker process died ({reason}; killed, or out of memory: see "
                   f"/tmp/ray/session_latest/logs); {hint}")
    return 1, ""


def main(argv: list[str] | None = None) -> int:
    import fer_ray.runtime

    args = parse_args(argv)
    fer_ray.runtime.VERBOSE = getattr(args, "verbose", False)  # read when (if) the stage starts Ray
    fer_ray.runtime.stop_on_signals()
    try:
        _check_output_folders(args)
        args.func(args)
        if fer_ray.runtime.STOPS:  # a stop whose exception was lost on the way: answered all the same
            raise Terminated() if signal.SIGTERM in fer_ray.runtime.STOPS else KeyboardInterrupt()
    except Exception as exc:
        code, line = _answer(exc, args.stage)
        if not line:
            traceback.print_exc()
            line = ("internal error (a bug in fer-ray, not in what you gave it): please report it to fer-ray's "
                    "maintainers with the traceback above")
        print(f"fer-ray {args.stage}: {line}", file=sys.stderr)
        return code
    except KeyboardInterrupt as exc:  # Ctrl+C, or SIGTERM (Terminated)
        code, line = _answer(exc, args.stage)
        print(f"fer-ray {args.stage}: {line}", file=sys.stderr)
        return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
