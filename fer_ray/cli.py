"""``fer-ray <stage>``: each stage is a thin call into the package's modules.

A stage's flags are its configs' fields, parsed by pydantic-settings: a field's name (or its
alias) is the flag, its description the help, its type, range and choices check the value, a
bool that defaults to True is ``--no-NAME``. ``--config FILE.yaml`` supplies any flag of
``train`` and ``pipeline`` (keys are flag names); explicit flags win.

Refusals the user can act on (``FerRayError``: a missing input, a bad flag, a damaged artifact)
print one line and exit with status 2. Anything else is a bug: its traceback is printed, then
one line asking for a report, and the exit status is 1.
"""

from __future__ import annotations

import errno
import os
import re
import signal
import sys
import traceback
import typing
from pathlib import Path
from typing import Callable, ClassVar, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model
from pydantic_settings import CliPositionalArg, CliSettingsSource, CliSubCommand, CliVariadicArg, SettingsError

from fer_ray.baseline.config import BaselineConfig
from fer_ray.data.config import PrepareConfig
from fer_ray.demo import DemoConfig
from fer_ray.ensemble.config import EnsembleConfig
from fer_ray.errors import FerRayError
from fer_ray.evaluation.config import EvaluateConfig
from fer_ray.inference.config import PredictConfig, ScoreConfig, ServeConfig, ServerOptions
from fer_ray.pipeline import PipelineConfig, is_uri
from fer_ray.runtime import Interrupted, Terminated
from fer_ray.training.config import NO_AUGMENT, Augment, Recipe, TrainConfig
from fer_ray.tuning.config import CnnSweep, SvmSweep


class Flags(BaseModel):
    """A stage's parsed flags: the fields of its configs and its own (``flags``)."""

    model_config = ConfigDict(extra="forbid")
    stage: ClassVar[str]  # the word after fer-ray, for messages
    run: ClassVar[Callable]


def flags(stage: str, help: str, run: Callable, *configs: dict, **own) -> type[Flags]:
    """The flags of ``stage`` (``sweep svm``: a subcommand's), which ``run`` runs: the fields in
    ``configs`` (``_fields``), then its ``own`` (name=(type, Field)), which replace a config's
    field of the same name. A list's values follow its flag: ``--models a b``."""
    fields = {}
    for config in configs:
        for name, field in config.items():
            many = any(typing.get_origin(t) in (tuple, list, dict) for t in (field.annotation,
                                                                               *typing.get_args(field.annotation)))
            fields[name] = (CliVariadicArg[field.annotation] if many else field.annotation, field)
    model = create_model(stage, __base__=Flags, __doc__=help, **(fields | own))
    model.stage, model.run = stage.split()[0], staticmethod(run)
    return model


def _fields(model: type[BaseModel], *exclude: str) -> dict:
    """``model``'s fields less ``exclude``: a new setting gets its flag without another list."""
    unknown = set(exclude) - set(model.model_fields)
    if unknown:
        raise KeyError(f"{model.__name__} has no fields {sorted(unknown)}")
    return {name: field for name, field in model.model_fields.items() if name not in exclude}


def _values(args: Flags, model: type[BaseModel]) -> dict:
    """The parsed values of ``model``'s fields, by field name: what the config is built from."""
    return {name: getattr(args, name) for name in model.model_fields if name in type(args).model_fields}


def _prepare(args) -> None:
    from fer_ray.data.catalog import audit
    from fer_ray.data.ingest import build_catalog
    from fer_ray.data.sources import make_source

    cfg = PrepareConfig(**_values(args, PrepareConfig))
    source = make_source(cfg.source, cfg.input, size=cfg.size, **cfg.source_options())
    manifest = build_catalog(source, cfg.output, split_mode=cfg.split, seed=cfg.seed,
                             overwrite=cfg.overwrite, num_cpus=cfg.num_cpus)
    print(audit(manifest))
    print(f"catalog written to {cfg.output} in {manifest['prepare_seconds']} s")


def _demo(args) -> None:
    from fer_ray.demo import run_demo

    run_demo(**_values(args, DemoConfig))


def _pipeline(args) -> None:
    from fer_ray.pipeline import Pipeline, headline

    summary = Pipeline(PipelineConfig(**_values(args, PipelineConfig))).run()
    print(headline(summary))
    print(f"report: {summary['outputs']['report']}  (storage: {summary['storage']})")


def _train(args) -> None:
    from fer_ray.training.trainer import train

    augment = NO_AUGMENT if args.no_augment else Augment(**_values(args, Augment))
    recipe = Recipe(**_values(args, Recipe), augment=augment)
    summary = train(TrainConfig(**_values(args, TrainConfig), recipe=recipe))
    print(f"artifact: {summary['artifact']}")


def _evaluate(args) -> None:
    from fer_ray.evaluation.evaluate import run_evaluate

    cfg = EvaluateConfig(**_values(args, EvaluateConfig))
    metrics = run_evaluate(_artifact(args), **cfg.model_dump())
    print(f"{cfg.split}: accuracy {metrics['accuracy']:.4f}  macro F1 {metrics['macro']['f1']:.4f}  "
          f"({metrics['count']} images, TTA {cfg.tta}); report in {cfg.output}/report.md")


def _score(args) -> None:
    from fer_ray.inference.batch import score_folder

    score_folder(**_values(args, ScoreConfig) | {"artifact": _artifact(args)})


def _serve(args) -> None:
    from fer_ray.inference.serve import run_server

    config = ServeConfig(**_values(args, ServeConfig) | {"artifact": _artifact(args)},
                         batch_wait_timeout_s=args.batch_wait_ms / 1000, num_gpus=1 if args.gpu else 0)
    run_server(config, ServerOptions(**_values(args, ServerOptions)))


def _artifact(args) -> str:
    """--artifact, or the model that ships with fer-ray (the command says which it uses)."""
    from fer_ray.pretrained import artifact_or_default

    return artifact_or_default(args.artifact)


def _models(args) -> None:
    from fer_ray.pretrained import model_table

    print(model_table())


def _predict(args) -> None:
    import json

    from fer_ray.inference.predict import check_inputs, format_table, predict

    images = list(args.images)
    check_inputs(images)
    records = predict(images, artifact=_artifact(args), **_values(args, PredictConfig))
    print(json.dumps(records, indent=2) if args.as_json else format_table(records))


def _baseline(args) -> None:
    from fer_ray.baseline.svm import run_baseline

    summary = run_baseline(**_values(args, BaselineConfig))
    print(f"artifact: {summary['artifact']}")


def _sweep_svm(args) -> None:
    from fer_ray.tuning.sweeps import sweep_svm

    print(f"best artifact: {sweep_svm(SvmSweep(**_values(args, SvmSweep)))['artifact']}")


def _sweep_cnn(args) -> None:
    from fer_ray.tuning.sweeps import sweep_cnn

    fixed = {"batch_size": args.batch_size, "optimizer": args.optimizer, "schedule": args.schedule}
    if args.no_augment:
        fixed["augment"] = NO_AUGMENT.model_dump()
    print(f"best artifact: {sweep_cnn(CnnSweep(**_values(args, CnnSweep), recipe=fixed))['artifact']}")


def _ensemble(args) -> None:
    from fer_ray.ensemble.features import run_ensemble

    summary = run_ensemble(**_values(args, EnsembleConfig) | {"gpu": True if args.gpu else None})
    print(f"artifact: {summary['artifact']}; report: {args.run_dir}/report.md")


def _switch(help: str) -> tuple:
    return bool, Field(False, description=help)


def _commands(name: str, help: str, *commands: type[BaseModel]) -> type[BaseModel]:
    """The command ``name`` whose subcommands are ``commands``, each named by the last word of
    its class name (``flags``' stage)."""
    return create_model(name, __doc__=help, **{command.__name__.split()[-1]: (CliSubCommand[command],
                                                                              Field(description=command.__doc__))
                                               for command in commands})


VERBOSE = _switch("also Ray's own logs and progress bars (default: fer-ray's progress lines and Ray's errors only)")
CONFIG = Optional[str], Field(None, description="YAML file whose keys are any of these flags (dashes or underscores)")
ARTIFACT = Optional[str], Field(None, description="artifact folder, or a shipped model's name (fer-ray models lists "
                                                   "them; default: the default model)")
NO_AUGMENT_FLAG = _switch("turn every augmentation off")
SERVE_ONLY = ("artifact", "batch_wait_timeout_s", "max_ongoing_requests", "num_gpus", "device", "body_timeout_s",
              "access_log")  # set by serve run / a RayService, or by the flags below
WAIT = ServeConfig.model_fields["batch_wait_timeout_s"]

STAGES = [
    flags("prepare", "read a source into a catalog (Parquet + manifest)", _prepare, _fields(PrepareConfig),
          verbose=VERBOSE),
    flags("demo", "the whole pipeline on synthetic faces and a local Ray (~3 min on 2 CPUs)", _demo,
          _fields(DemoConfig), verbose=VERBOSE),
    flags("pipeline", "the paper end to end: prepare, SVM sweep, CNNs, ensemble, report, transfer to KDEF, scoring",
          _pipeline, _fields(PipelineConfig, "svm_lambda", "ensemble_batch_size"), config=CONFIG, verbose=VERBOSE),
    flags("train", "train a CNN with Ray Train (also transfer learning)", _train,
          _fields(TrainConfig, "recipe", "fault_epoch"),  # the recipe's flags follow; a testing aid
          _fields(Recipe, "augment", "channels_last", "eval_batch_size"), _fields(Augment, "erase_area"),
          no_augment=NO_AUGMENT_FLAG, config=CONFIG, verbose=VERBOSE),
    flags("evaluate", "evaluate an artifact on a catalog split", _evaluate, _fields(EvaluateConfig), artifact=ARTIFACT),
    flags("score", "score every image and video in a folder or glob with Ray Data (resumable)", _score,
          _fields(ScoreConfig), artifact=ARTIFACT, verbose=VERBOSE),
    flags("serve", "serve an artifact over HTTP with Ray Serve (batched)", _serve, _fields(ServerOptions),
          _fields(ServeConfig, *SERVE_ONLY), artifact=ARTIFACT,
          batch_wait_ms=(float, Field(WAIT.default * 1000, ge=0, allow_inf_nan=False,
                                      description=f"{WAIT.description}, ms")),
          gpu=_switch("one GPU per replica"), verbose=VERBOSE),
    flags("predict", "emotions of the faces in a few images or videos, no Ray (table, or --json)", _predict,
          _fields(PredictConfig), images=(CliPositionalArg[tuple[str, ...]], Field(description="image or video files")),
          artifact=ARTIFACT, as_json=(bool, Field(False, alias="json", description="JSON records instead of a table"))),
    flags("models", "the models that ship with fer-ray: size, PublicTest accuracy, speed on this machine", _models),
    flags("baseline", "the paper's linear SVM (hinge loss, L2 lambda) on standardised pixels", _baseline,
          _fields(BaselineConfig)),
    _commands("sweep", "Ray Tune sweeps: svm (lambda) or cnn (lr, weight decay; ASHA); resumable",
              flags("sweep svm", SvmSweep.__doc__.splitlines()[0], _sweep_svm, _fields(SvmSweep), verbose=VERBOSE),
              flags("sweep cnn", CnnSweep.__doc__.splitlines()[0], _sweep_cnn,
                    _fields(CnnSweep, "reduction_factor", "recipe"),
                    {name: Recipe.model_fields[name] for name in ("batch_size", "optimizer", "schedule")},  # fixed
                    no_augment=NO_AUGMENT_FLAG, verbose=VERBOSE)),
    flags("ensemble", "the paper's stacked ensemble of CNN artifacts (plus soft voting)", _ensemble,
          _fields(EnsembleConfig), gpu=_switch(EnsembleConfig.model_fields["gpu"].description), verbose=VERBOSE),
]
FER_RAY = _commands("fer-ray", __doc__.splitlines()[0], *STAGES)


def parse_args(argv: list[str] | None = None) -> Flags:
    """The stage's flags; ``--config FILE.yaml`` supplies values that explicit flags override,
    required ones too. A usage error or a bad value is one line and exit status 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    source = CliSettingsSource(FER_RAY, cli_prog_name="fer-ray", cli_kebab_case=True, cli_implicit_flags="toggle",
                               cli_avoid_json=True, cli_hide_none_type=True, add_argument_method=_add_argument)
    try:
        given = source(args=argv)()
    except SettingsError as exc:  # a value the parser could not split, e.g. --input-sizes resnet50
        _refuse("fer-ray", str(exc))
    model, command = FER_RAY, "fer-ray"
    while not issubclass(model, Flags):  # down the chosen (sub)commands
        name = next((name for name, values in given.items() if values is not None), None)
        if name is None:
            _refuse(command, f"a command is required: one of {', '.join(model.model_fields)}")
        model, given = typing.get_args(model.model_fields[name].annotation)[0], given[name]  # (Flags | None)
        command = f"{command} {name}"
    path = given.get("config")
    values = {**_config(command, model, path), **given} if path else given
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        errors = [error | {"loc": error["loc"][:1]} for error in exc.errors()]  # a flag's, not its list item's
        _refuse(command, one_line(errors, {key: f" (in {path})" for key in values.keys() - given.keys()}))


def _add_argument(parser, *names: str, **kwargs):
    """``parser.add_argument`` with fer-ray's help: ``--run-dir RUN_DIR``, ``--models {a,b} [{a,b} ...]``,
    ``--no-amp``: no bf16 autocast; no default shown for a switch, nor where there is none."""
    help = (kwargs.get("help") or "").removesuffix("(default: None)").strip()
    if kwargs.get("action") in ("store_true", "store_false"):
        help = re.sub(r" ?\(default: (True|False)\)$", "", help)
        help = f"no {help}" if help and kwargs["action"] == "store_false" else help
    elif "metavar" in kwargs:
        name = names[0].split(".")[-1].lstrip("-").upper().replace("-", "_")
        choices = re.search(r"\{[^{}]*\}", kwargs["metavar"])
        kwargs["metavar"] = choices[0] if choices else name.removesuffix("S") if kwargs.get("nargs") else name
    return parser.add_argument(*names, **kwargs | {"help": help or None})


def _config(command: str, model: type[Flags], path: str) -> dict:
    """``path``'s YAML: flag names (dashes or underscores) to values."""
    import yaml

    try:
        with open(path) as fh:
            values = yaml.safe_load(fh) or {}
    except (OSError, yaml.YAMLError) as exc:
        _refuse(command, f"cannot read --config {path}: {exc}")
    if not isinstance(values, dict):
        _refuse(command, f"{path} must hold a mapping of flag names to values")
    fields = {field.alias or name: field for name, field in model.model_fields.items()}
    config = {}
    for key, value in values.items():
        key = str(key).replace("-", "_")
        if key not in fields and key.removeprefix("no_") in fields and isinstance(value, bool):
            key, value = key.removeprefix("no_"), not value  # `no_flip: true` means what --no-flip means
        if key in fields and fields[key].annotation is bool and not isinstance(value, bool | None):
            _refuse(command, f"{key} (in {path}) must be true or false, got {value!r}")  # not pydantic's "no", 0
        if value is not None:  # `key:` with no value: the flag's default
            config[key] = value
    return config


def _refuse(command: str, line: str) -> typing.NoReturn:
    print(f"{command}: error: {line}", file=sys.stderr)
    sys.exit(2)


def one_line(errors: list[dict], notes: dict | None = None) -> str:
    """A ValidationError's ``errors()`` as one line naming the flags: ``--lr: input should be a
    finite number, got nan`` (pydantic's own text spans several lines and names fields, not
    flags). ``notes`` adds to a flag's name, e.g. the YAML file it came from."""
    parts = []
    for error in errors:
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "value_error":  # our own rules name their flags and say what they got
            parts.append(message)
            continue
        key = next((key for key in reversed(error["loc"]) if isinstance(key, str)), "")
        name = key if error["type"] == "extra_forbidden" else "--" + key.replace("_", "-")
        got = "" if error["type"] == "missing" else f", got {error['input']!r}"
        parts.append(f"{name}{(notes or {}).get(key, '')}: {message[:1].lower()}{message[1:]}{got}")
    return "; ".join(parts)


def _check_output_folders(args) -> None:
    """A folder to write whose path runs into an existing file, or whose nearest existing folder
    cannot be written (a read-only mount, an immutable folder): one error line before any work,
    not an error once the work is done."""
    folders = [getattr(args, "run_dir", None), getattr(args, "work_dir", None)]
    if args.stage in ("evaluate", "demo"):
        folders.append(args.output)
    if args.stage in ("prepare", "score"):  # prepare builds the catalog beside --output, then puts it in its place
        folders.append(str(Path(args.output).parent))
    if args.stage == "prepare" and Path(args.output).is_dir():
        folders.append(args.output)
    if args.stage == "pipeline" and not is_uri(args.storage):
        folders.append(args.storage)
    for folder in filter(None, folders):
        path = next(path for path in (Path(folder), *Path(folder).parents) if path.exists())  # "." or "/" at last
        if not path.is_dir():
            raise FerRayError(f"{folder}: {path} is a file, not a folder")
        if not os.access(path, os.W_OK | os.X_OK):
            raise FerRayError(f"{folder}: cannot write in {path} (read-only, or another user's)")


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
        return 2, f"error: {one_line(exc.errors())}"
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
    fer_ray.runtime.log_to_console(args.stage)
    fer_ray.runtime.stop_on_signals()
    try:
        _check_output_folders(args)
        args.run(args)
        if fer_ray.runtime.STOPS:  # a stop whose exception was lost on the way: answered all the same
            raise Terminated() if signal.SIGTERM in fer_ray.runtime.STOPS else KeyboardInterrupt()
    except (Exception, KeyboardInterrupt) as exc:  # KeyboardInterrupt: Ctrl+C, or SIGTERM (Terminated)
        code, line = _answer(exc, args.stage)
        if not line:
            traceback.print_exc()
            line = ("internal error (a bug in fer-ray, not in what you gave it): please report it to fer-ray's "
                    "maintainers with the traceback above")
        print(f"fer-ray {args.stage}: {line}", file=sys.stderr)
        return code
    finally:
        fer_ray.runtime.wait_for_stopping_datasets()
    return 0


if __name__ == "__main__":
    sys.exit(main())
