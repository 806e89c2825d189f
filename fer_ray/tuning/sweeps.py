"""Ray Tune sweeps: the SVM's lambda, and a CNN's learning rate / weight decay with ASHA.

Each trial is a plain function: the SVM trial calls ``baseline.svm.fit_svm``, the CNN trial
calls ``training.trainer.train`` (which builds a ``TorchTrainer`` and calls ``.fit()``: Ray
2.60's Train V2 cannot be handed to a ``Tuner`` directly). A ``TuneReportCallback`` forwards
each epoch's report from the Train run to Tune, so ASHA can judge a trial after any epoch.

ASHA's stop decisions are delivered to the Train run instead of killing the trial. Killing a
trial kills its Train controller mid-run, and then nothing gives back the run's placement
group: Train's cleaner needs the State API, which a local Ray started without a dashboard
(as fer-ray starts it) does not have. The leaked CPU starves every later trial: on 2 CPUs
the sweep hung. So ``CooperativeASHA`` records "stop" on a small named actor and lets the
trial continue; the trial's Train callback sees it at the next report and ends the run the
normal way (workers stopped, placement group removed). A stopped trial runs at least one
epoch more than plain ASHA would give it: its worker does not wait for the decision, so
epochs much shorter than a report's round trip (tiny CPU demos) may run to the end anyway;
results.csv's ``epochs`` counts the reports Tune judged.

Resources: an SVM trial takes 1 CPU (liblinear is single-threaded). A CNN trial's driver
function takes no CPU and its one Train worker takes ``cpus_per_worker`` (or a GPU);
the random search (``BasicVariantGenerator(max_concurrent=...)``; Tune ignores
``max_concurrent_trials`` for it) starts only as many trials as the cluster fits, so a
starting trial's data loading never waits behind running workers for the last CPU.

A sweep's run directory::

    run.json            settings (fer_ray.rundir); other settings are refused unless --overwrite
    tune/<kind>/        Tune's experiment state: rerunning the same command resumes it
    trials/<trial_id>/  SVM: artifact/ ; CNN: the trial's whole training run dir
    results.csv         one row per trial: config, val_acc, epochs, status
    artifact/           a copy of the chosen trial's artifact (highest final val accuracy among
                        completed trials), evaluated in eval-val/ and eval-test/
    result.json         written last: the chosen trial, its scores (a rerun returns it)

The run directory must be visible to every node (a local disk on one machine, shared
storage on a cluster), as for ``fer-ray train``.
"""

from __future__ import annotations

import csv
import logging
import shutil
import signal
import time
from pathlib import Path

from ray.tune.schedulers import ASHAScheduler

from fer_ray.baseline.svm import fit_svm, save_svm
from fer_ray.data.catalog import Catalog
from fer_ray.errors import FerRayError
from fer_ray.rundir import Run, open_run
from fer_ray.runtime import Interrupted, environ, kept_signal_handlers
from fer_ray.tuning.config import CnnSweep, SvmSweep

DRIVER_MEMORY = 256 * 1024**2  # bytes reserved for a CNN trial's driver function (it reserves no CPU)
RESULT_FIELDS = ("trial_id", "status", "val_acc", "epochs", "seconds", "artifact", "error")  # + config's keys
log = logging.getLogger(__name__)


class SweepInterrupted(Interrupted):
    """The sweep stopped before every trial finished; rerun the same command to resume."""


# ------------------------------------------------------------------ trials (run in Tune)


def _trial_dir(run_dir: str) -> Path:
    from ray import tune

    path = Path(run_dir) / "trials" / tune.get_context().get_trial_id()
    path.mkdir(parents=True, exist_ok=True)
    return path


def svm_trial(config: dict, settings: dict, catalog: Catalog, train: dict, val: dict) -> None:
    """Fit one lambda on train, score val, keep the artifact; one report per trial.

    Tune runs quietly here (its tables would bury the results), so each trial says itself when
    it starts and what it scored: a FER2013 fit takes a minute or more.
    """
    from ray import tune

    name = f"[sweep svm] trial {tune.get_context().get_trial_id()} lambda={config['lambda']:.4g}"
    print(f"{name}: fitting on {len(train['label'])} faces", flush=True)
    model, info = fit_svm(train["image"], train["label"], config["lambda"], settings["solver"], settings["max_iter"],
                          loss=settings["loss"])
    val_acc = float((model.decision(val["image"]).argmax(axis=1) == val["label"]).mean())
    print(f"{name}: val accuracy {val_acc:.4f} (fit {info['fit_seconds']:.0f} s)", flush=True)
    artifact = save_svm(str(_trial_dir(settings["run_dir"]) / "artifact"), model, info, catalog)
    tune.report({"val_acc": val_acc, "epoch": 1, "fit_seconds": info["fit_seconds"],
                 "converged": info["converged"], "artifact": str(artifact), "final": True})


class StopBoard:
    """Trial ids ASHA wants stopped (a named actor shared by the sweep driver and the Train runs)."""

    def __init__(self):
        self.stopped: set[str] = set()

    def stop(self, trial_id: str) -> None:
        self.stopped.add(trial_id)

    def should_stop(self, trial_id: str) -> bool:
        return trial_id in self.stopped


def _board_name(run_dir: str) -> str:
    import hashlib

    return "fer-ray-sweep-stops-" + hashlib.sha1(str(run_dir).encode()).hexdigest()[:12]


class TrialStopped(RuntimeError):
    """Raised in a Train callback to end a run that ASHA stopped."""


def cnn_trial(config: dict, settings: dict) -> None:
    """One Ray Train run; its per-epoch reports reach Tune (and ASHA) through the callback."""
    import ray
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from fer_ray.runtime import log_to_console
    from fer_ray.training.config import Recipe, TrainConfig
    from fer_ray.training.trainer import train

    class ReportUnlessStopped(TuneReportCallback):
        """Forward each report to Tune, unless ASHA has stopped this trial: then end the run."""

        def __init__(self, board_name: str, trial_id: str):
            super().__init__()
            self.board_name, self.trial_id = board_name, trial_id

        def after_report(self, run_context, metrics, checkpoint):
            if ray.get(ray.get_actor(self.board_name).should_stop.remote(self.trial_id)):
                raise TrialStopped(f"trial {self.trial_id} stopped by ASHA")
            super().after_report(run_context, metrics, checkpoint)

    trial_id = tune.get_context().get_trial_id()
    board = _board_name(settings["run_dir"])
    recipe = Recipe.model_validate({**settings["recipe"], "epochs": settings["epochs"], **config})
    cfg = TrainConfig(catalog=settings["catalog"], run_dir=str(_trial_dir(settings["run_dir"])),
                      model=settings["model"], recipe=recipe, workers=1, gpu=settings["gpu"],
                      cpus_per_worker=settings["cpus_per_worker"], name="train", max_failures=0)
    log_to_console("sweep")  # the training's lines, from this Ray worker to the driver's console
    try:
        summary = train(cfg, callbacks=[ReportUnlessStopped(board, trial_id)])
    except Exception:
        if ray.get(ray.get_actor(board).should_stop.remote(trial_id)):
            return  # stopped by ASHA: the run ended cleanly, its last report stands
        raise
    # The last report states the finished artifact's own val accuracy (the selection criterion).
    tune.report({"val_acc": summary["evaluations"]["val"]["accuracy"], "epoch": len(summary["history"]),
                 "artifact": summary["artifact"], "final": True})


# ------------------------------------------------------------------ driver


def sweep_svm(cfg: SvmSweep) -> dict:
    """Sample ``samples`` lambdas log-uniformly, keep the one with the best val accuracy."""
    from ray import tune

    from fer_ray.runtime import cluster_capacity, init_ray

    catalog = Catalog.open(cfg.catalog).require("train", "val")  # fitted on, chosen on: checked before Ray starts
    settings = _settings(cfg, catalog)
    with open_run(cfg.run_dir, "sweep svm", settings, overwrite=cfg.overwrite) as run:
        if run.done:
            return run.done
        init_ray()
        concurrency = cfg.concurrency or max(1, int(cluster_capacity().get("CPU", 1)))
        trainable = tune.with_resources(
            tune.with_parameters(svm_trial, settings=settings, catalog=catalog, train=catalog.load("train"),
                                 val=catalog.load("val")), {"CPU": 1})
        space = {"lambda": tune.loguniform(cfg.lambda_min, cfg.lambda_max)}
        return _run(run, trainable, space, "svm", cfg, catalog, concurrency, scheduler=None)


def sweep_cnn(cfg: CnnSweep) -> dict:
    """Sample lr / weight decay (and optionally batch size, label smoothing); ASHA stops laggards."""
    import ray
    from ray import tune

    from fer_ray.runtime import cluster_capacity, init_ray, require_cpus
    from fer_ray.training.config import Recipe

    Recipe.model_validate({**cfg.recipe, "epochs": cfg.epochs})  # fail fast on bad fixed settings
    catalog = Catalog.open(cfg.catalog).require("train", "val")  # every trial would fail without them
    settings = _settings(cfg, catalog)
    with open_run(cfg.run_dir, "sweep cnn", settings, overwrite=cfg.overwrite) as run:
        if run.done:
            return run.done
        init_ray()
        resources = cluster_capacity()
        if cfg.gpu:
            fits = int(resources.get("GPU", 0))
            if fits < 1:
                raise FerRayError("--gpu given but the Ray cluster has no GPU")
        else:
            require_cpus(cfg.cpus_per_worker,
                         f"--cpus-per-worker {cfg.cpus_per_worker:g}: a trial's Train worker would")
            fits = int(resources.get("CPU", 1) // cfg.cpus_per_worker)
        concurrency = cfg.concurrency or max(1, fits)
        space = {"lr": tune.loguniform(cfg.lr_min, cfg.lr_max), "weight_decay": tune.loguniform(cfg.wd_min, cfg.wd_max)}
        if cfg.batch_sizes:
            space["batch_size"] = tune.choice(list(cfg.batch_sizes))
        if cfg.label_smoothing:
            space["label_smoothing"] = tune.uniform(*cfg.label_smoothing)
        # The driver function only waits on its Train run, so it holds no CPU: the Train worker and
        # the run's Ray Data reads get them. Tune refuses an all-zero request, hence a little memory.
        trainable = tune.with_resources(tune.with_parameters(cnn_trial, settings=settings),
                                        {"CPU": 0, "memory": DRIVER_MEMORY})
        board_name = _board_name(settings["run_dir"])
        board = ray.remote(StopBoard).options(name=board_name, get_if_exists=True, num_cpus=0).remote()
        scheduler = CooperativeASHA(board_name, time_attr="epoch", max_t=cfg.epochs,
                                    grace_period=min(cfg.grace_period, cfg.epochs),
                                    reduction_factor=cfg.reduction_factor)
        try:
            return _run(run, trainable, space, "cnn", cfg, catalog, concurrency, scheduler)
        finally:
            ray.kill(board)  # a rerun (or a resume) starts from a clean board


class CooperativeASHA(ASHAScheduler):
    """ASHA that asks a trial's Train run to stop (see the module docstring) instead of killing it."""

    def __init__(self, board_name: str, **kwargs):
        super().__init__(**kwargs)
        self.board_name = board_name

    def on_trial_result(self, tune_controller, trial, result):
        import ray

        decision = super().on_trial_result(tune_controller, trial, result)
        if decision != self.STOP:
            return decision
        # ASHA also says STOP at max_t; that trial is finishing on its own (saving its artifact).
        if result.get("epoch", 0) < self._max_t:
            ray.get(ray.get_actor(self.board_name).stop.remote(trial.trial_id))
        return self.CONTINUE


def _settings(cfg, catalog: Catalog) -> dict:
    """What a sweep's trials and its run.json see: the config with absolute paths, and the
    catalog's checksum (a catalog rebuilt in place is another catalog)."""
    return {**cfg.model_dump(exclude={"overwrite"}), "run_dir": str(Path(cfg.run_dir).resolve()),
            **catalog.run_settings}


def _run(run: Run, trainable, space: dict, kind: str, cfg, catalog: Catalog, concurrency: int, scheduler) -> dict:
    """Start or resume the Tune experiment, then tabulate trials and keep the best artifact."""
    from ray import tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from fer_ray.artifacts import update_metrics
    from fer_ray.evaluation.evaluate import evaluate_splits

    # Tune would silently keep a resumed sweep's old settings: other ones were refused (open_run).
    run_dir = run.claim()
    experiment = run_dir / "tune" / kind
    t0 = time.time()
    if tune.Tuner.can_restore(str(experiment)):
        log.info(f"sweep {kind}: resuming the interrupted sweep in {experiment}")
        tuner = tune.Tuner.restore(str(experiment), trainable=trainable, resume_errored=True)
    else:
        log.info(f"sweep {kind}: {cfg.samples} trials, up to {concurrency} at a time")
        tuner = tune.Tuner(
            trainable, param_space=space,
            # The random search's own limit (Tune ignores max_concurrent_trials for it).
            tune_config=tune.TuneConfig(metric="val_acc", mode="max", num_samples=cfg.samples, scheduler=scheduler,
                                        search_alg=BasicVariantGenerator(random_state=cfg.seed,
                                                                         max_concurrent=concurrency)),
            run_config=tune.RunConfig(name=kind, storage_path=str(run_dir / "tune"), verbose=0))
    # Tune 2.60's new output engine prints a configuration table and a TensorBoard hint even at
    # verbose=0; its legacy engine, chosen per fit by this variable, keeps quiet (the trials
    # print their own lines).
    # Tune's Ctrl+C handler ends the sweep gracefully (SweepInterrupted below), then must go.
    with environ(RAY_AIR_NEW_OUTPUT="0"), kept_signal_handlers(signal.SIGINT, signal.SIGUSR1):
        grid = tuner.fit()
    rows = [_row(r) for r in grid]
    _write_results(run_dir / "results.csv", rows)
    # From the rows, not Tune's counts: after Ctrl+C Tune marks the interrupted trials terminated.
    unfinished = sum(r["status"] == "unfinished" for r in rows)
    if unfinished or len(grid) < cfg.samples:
        raise SweepInterrupted(f"sweep {kind} stopped with {len(rows) - unfinished} of {cfg.samples} trials finished "
                               f"(results so far in {run_dir / 'results.csv'}); rerun the same command to resume")
    best = choose_best(rows)
    seconds = round(time.time() - t0, 2)
    artifact = run_dir / "artifact"
    shutil.rmtree(artifact, ignore_errors=True)
    shutil.copytree(best["artifact"], artifact)
    update_metrics(artifact, {"sweep": {"trial_id": best["trial_id"], "config": best["config"],
                                        "val_acc": best["val_acc"], "trials": len(rows)}})
    counts = {s: sum(r["status"] == s for r in rows) for s in ("complete", "stopped", "error")}
    log.info(f"sweep: {len(rows)} trials ({', '.join(f'{n} {s}' for s, n in counts.items() if n)}) in {seconds:.1f} s; "
             f"best {best['trial_id']} {_fmt(best['config'])} val_acc {best['val_acc']:.4f}")
    evals = evaluate_splits(str(artifact), catalog, run_dir, prefix="sweep: best ")
    return run.finish({"best": best, "trials": counts, "seconds": seconds, "artifact": str(artifact),
                       "evaluations": evals})


def _row(result) -> dict:
    """One trial: complete (returned with an artifact), stopped (by ASHA), unfinished, or error.

    A trial is finished once its function made its ``final`` report (the last thing it does,
    after its artifact is written) or returned (Tune's ``done``). Not ``done`` alone: a Ctrl+C
    between the final report and the return leaves a trial terminated without ``done``, which
    a resumed sweep does not run again. An artifact without the final report does not count.
    """
    m = result.metrics or {}
    artifact = m.get("artifact")
    if result.error is not None:
        status = "error"
    elif not (m.get("final") or m.get("done")):
        status = "unfinished"
    else:
        status = "complete" if artifact and Path(artifact, "model.json").exists() else "stopped"
    return {"trial_id": m.get("trial_id") or Path(result.path).name, "status": status,
            "val_acc": m.get("val_acc"), "epochs": m.get("epoch"), "seconds": m.get("time_total_s"),
            "config": result.config, "artifact": artifact if status == "complete" else None,
            "error": None if result.error is None else str(result.error).splitlines()[0][:300]}


def choose_best(rows: list[dict]) -> dict:
    """The completed trial with the highest final val accuracy (ties: the first by trial id)."""
    done = sorted((r for r in rows if r["status"] == "complete" and r["val_acc"] is not None),
                  key=lambda r: r["trial_id"])
    if not done:
        errors = [r["error"] for r in rows if r["error"]]
        raise RuntimeError("no sweep trial completed" + (f"; first error: {errors[0]}" if errors else ""))
    return max(done, key=lambda r: r["val_acc"])


def _write_results(path: Path, rows: list[dict]) -> None:
    """One row per trial, from the ResultGrid's results. Not ``ResultGrid.get_dataframe()``: it
    leaves out a trial that never reported (one that failed as it started), and its two dozen
    bookkeeping columns would bury these."""
    keys = sorted({k for r in rows for k in (r["config"] or {})})
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(RESULT_FIELDS + tuple(keys))
        for r in sorted(rows, key=lambda r: r["trial_id"]):
            w.writerow([r[f] for f in RESULT_FIELDS] + [(r["config"] or {}).get(k) for k in keys])


def _fmt(config: dict) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in sorted(config.items()))


def results_table(run_dir: str) -> list[dict]:
    """results.csv as dicts (numbers parsed), for tests and reports."""
    with open(Path(run_dir) / "results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    text = ("trial_id", "status", "artifact", "error")
    return [{k: None if v in ("", None) else v if k in text else _number_or_text(v) for k, v in r.items()}
            for r in rows]


def _number_or_text(value: str) -> float | str:
    """A CSV cell as a number, or as it is for a categorical config value."""
    try:
        return float(value)
    except ValueError:
        return value


__all__ = ["SvmSweep", "CnnSweep", "SweepInterrupted", "sweep_svm", "sweep_cnn", "choose_best", "results_table"]
