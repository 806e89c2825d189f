"""The paper end to end: prepare -> SVM baseline (swept) -> CNNs -> ensemble -> report
(-> transfer learning to KDEF) (-> scoring a folder).

``jobs/pipeline.py`` runs it on a cluster with the paper's networks; ``fer-ray demo`` runs it
on synthetic faces with small CNNs. Each stage writes its own directory under the work
directory, a run directory (``fer_ray.rundir``) whose ``result.json`` says it finished: a
finished stage is skipped, so a rerun after an interruption continues where it stopped
(training itself also resumes from its checkpoints), and the report is read from the stages'
results, not from their files. The work directory is itself claimed: its ``run.json`` holds
the settings its finished stages were made with. With a storage URI (``s3://...``, anything
pyarrow understands) every finished stage is uploaded there; the work directory must then be
on storage all nodes share (e.g. the shared volume of the KubeRay manifests), since Ray tasks
on any node write into it.
"""

import json
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, model_validator

from fer_ray import rundir
from fer_ray.choices import MAX_SIDE, MODEL_NAMES
from fer_ray.data.catalog import MANIFEST, Catalog
from fer_ray.data.config import PrepareConfig
from fer_ray.data.faces import DEFAULT_DETECTOR, DETECTORS
from fer_ray.data.files import glob_files
from fer_ray.data.sources import SOURCES
from fer_ray.ensemble.config import EnsembleConfig
from fer_ray.errors import FerRayError
from fer_ray.training.config import Recipe, TrainConfig
from fer_ray.tuning.config import SvmSweep

PAPER = {  # Savoiu & Wong, test accuracy on FER2013 (transfer: on KDEF)
    "svm": 0.318, "vgg16": 0.592, "vgg16_bn": 0.592, "resnet50": 0.651, "ensemble": 0.672, "transfer": 0.783,
}
# Settings that shape what a finished stage holds. A rerun that resumes may change anything
# else (storage, resources, --gpu, what to score, adding --kdef), but not these.
STAGE_SETTINGS = ("source", "input", "count", "size", "models", "input_sizes", "epochs", "batch_size", "lr",
                  "workers", "svm_samples", "svm_lambda", "seed")
# ...and these shape the transfer stage, so they matter only once a run has had one (--kdef).
TRANSFER_SETTINGS = ("kdef", "kdef_face_crop", "transfer_freeze", "transfer_epochs")
PREPARE = PrepareConfig.model_fields  # the catalog stage's defaults
TIMINGS_FILE = "stage-timings.json"
log = logging.getLogger(__name__)


class PipelineConfig(BaseModel):
    """Every setting of ``fer-ray pipeline`` (its flags are generated from these fields)."""

    model_config = ConfigDict(extra="forbid")

    storage: str = Field(description="output directory, or a URI (s3://...) results are uploaded to")
    work_dir: Optional[str] = Field(None, description="with a URI --storage (required then): shared directory stages "
                                                      "write to; a rerun with the same one resumes")
    source: Literal[tuple(SOURCES)] = "synthetic"
    input: Optional[str] = Field(None, description="the source's CSV file or folder")
    # A field that means here what it means for the stage it is passed to is that stage's field.
    count: int = PREPARE["count"]
    size: int = Field(PREPARE["size"].default, ge=1, le=MAX_SIDE, description=PREPARE["size"].description)
    # Two fast_cnn, seeded apart (each member's seed is --seed + its index): the CPU-efficient
    # family's best accuracy per CPU-minute (its narrower fast_cnn_s trains no faster on an AMX
    # CPU; benchmarks/RESULTS.md). The paper's vgg16_bn and resnet50 want a GPU (docs/pipeline.md).
    models: tuple[Literal[tuple(sorted(MODEL_NAMES))], ...] = Field(
        ("fast_cnn", "fast_cnn"), min_length=2,
        description="CNN members of the ensemble (the paper's are vgg16_bn resnet50)")
    input_sizes: dict[str, int] = Field(default_factory=dict, description="network input size per model")
    epochs: int = Field(50, ge=1)
    batch_size: int = Recipe.model_fields["batch_size"]
    lr: float = Recipe.model_fields["lr"]
    workers: int = TrainConfig.model_fields["workers"]
    gpu: bool = False
    cpus_per_worker: Optional[float] = TrainConfig.model_fields["cpus_per_worker"]
    svm_samples: int = Field(4, ge=1)
    svm_lambda: tuple[float, float] = (SvmSweep.model_fields["lambda_min"].default,
                                       SvmSweep.model_fields["lambda_max"].default)
    ensemble_batch_size: int = EnsembleConfig.model_fields["batch_size"]
    kdef: Optional[str] = Field(None, description="KDEF folder: fine-tune the best CNN on it (transfer learning)")
    kdef_face_crop: bool = Field(True, description="face crop of the KDEF photos")
    transfer_freeze: int = -2
    transfer_epochs: int = Field(20, ge=1)
    score_input: Optional[str] = Field(None, description="folder of photos to score with the ensemble at the end")
    score_detector: Literal[DETECTORS] = Field(DEFAULT_DETECTOR, description="face detector for --score-input "
                                               "(as fer-ray score's --detector)")
    seed: int = 0

    @model_validator(mode="after")
    def _late_stages(self):
        """Check what the late stages need before the early ones spend their minutes."""
        unknown = sorted(set(self.input_sizes) - set(self.models))
        if unknown:
            raise FerRayError(f"--input-sizes names {unknown}, which --models {list(self.models)} does not train")
        if any(size < 32 for size in self.input_sizes.values()):
            raise FerRayError(f"--input-sizes must be at least 32 pixels, got {self.input_sizes}")
        if is_uri(self.storage) and not self.work_dir:
            raise FerRayError("a URI --storage needs --work-dir: a folder every node sees, where the stages write "
                              "(a rerun with the same one resumes)")
        if self.work_dir and not is_uri(self.storage):
            raise FerRayError(f"--work-dir is for a URI --storage (s3://...); the stages write into the local "
                              f"--storage {self.storage} itself: leave out --work-dir")
        if self.kdef and not Path(self.kdef).is_dir():
            raise FerRayError(f"--kdef folder not found: {self.kdef}")
        if self.kdef:  # the transfer stage comes last: a bad --transfer-freeze failed after every CNN
            from fer_ray.models import build_model
            from fer_ray.training.transfer import resolve_freeze

            for model in set(self.models):  # any of them may be the best, whose artifact is fine-tuned
                resolve_freeze(build_model(model, input_size=self.input_sizes.get(model, self.size)),
                               self.transfer_freeze)
        if self.score_input and not (Path(self.score_input).exists() or glob_files(self.score_input)):
            raise FerRayError(f"--score-input not found: {self.score_input} (a folder, a file or a glob)")
        return self


def is_uri(path: str) -> bool:
    return "://" in path


def upload(local: Path, uri: str) -> None:
    """Copy a finished stage's directory, or a report file, to ``uri`` (s3://, gs://, file://, ...)."""
    import pyarrow.fs as pafs

    fs, root = pafs.FileSystem.from_uri(uri)
    if local.is_dir():
        fs.create_dir(root, recursive=True)
    pafs.copy_files(str(local), root, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)


class Pipeline:
    def __init__(self, cfg: PipelineConfig):
        self.cfg = cfg
        self.work = Path(cfg.work_dir if is_uri(cfg.storage) else cfg.storage)
        self.work.mkdir(parents=True, exist_ok=True)
        # Each stage's time when it ran: a resumed run reports those, not the ~0 s of skipping them.
        timings = self.work / TIMINGS_FILE
        self.timings: dict[str, float] = json.loads(timings.read_text()) if timings.is_file() else {}

    # ------------------------------------------------------------ stages

    def stage(self, name: str, fn, done: Path | None = None, again: bool = False) -> dict | None:
        """Run ``fn`` unless the stage finished (and is not to run ``again``); upload; time it. Return
        the stage's result, its run directory's ``result.json`` (a catalog is no run: its ``done``
        file says it is built)."""
        t0 = time.perf_counter()
        folder = self.work / name
        if not again and (done or folder / rundir.RESULT).exists():
            log.info(f"[pipeline] {name}: already done ({done or folder / rundir.RESULT}), skipping")
        else:
            log.info(f"[pipeline] {name} ...")
            fn()
            self.timings[name] = round(time.perf_counter() - t0, 1)
            (self.work / TIMINGS_FILE).write_text(json.dumps(self.timings, indent=2))
        if is_uri(self.cfg.storage):
            upload(folder, f"{self.cfg.storage.rstrip('/')}/{name}")
        return None if done else rundir.result(folder)

    def prepare(self) -> Catalog:
        from fer_ray.data.catalog import audit
        from fer_ray.data.ingest import build_catalog
        from fer_ray.data.sources import make_source

        out = self.work / "catalog"
        prep = PrepareConfig(source=self.cfg.source, input=self.cfg.input, output=str(out), size=self.cfg.size,
                             count=self.cfg.count, seed=self.cfg.seed, overwrite=True)

        def run():
            source = make_source(prep.source, prep.input, size=prep.size, **prep.source_options())
            build_catalog(source, prep.output, seed=prep.seed, overwrite=prep.overwrite)

        self.stage("catalog", run, done=out / MANIFEST)
        catalog = Catalog.open(out)
        log.info(audit(catalog.manifest))
        return catalog

    def svm(self, catalog: Catalog) -> dict:
        from fer_ray.tuning.sweeps import SvmSweep, sweep_svm

        lo, hi = self.cfg.svm_lambda
        return self.stage("svm", lambda: sweep_svm(
            SvmSweep(catalog=str(catalog.path), run_dir=str(self.work / "svm"), samples=self.cfg.svm_samples, lambda_min=lo,
                     lambda_max=hi, seed=self.cfg.seed)))

    def cnn(self, catalog: Catalog, index: int, model: str, init_from: str | None = None, freeze: int = 0,
            epochs: int | None = None, name: str | None = None) -> dict:
        from fer_ray.training.config import Recipe, TrainConfig
        from fer_ray.training.trainer import train

        name = name or f"cnn-{index}-{model}"
        recipe = Recipe(epochs=epochs or self.cfg.epochs, batch_size=self.cfg.batch_size, lr=self.cfg.lr,
                        seed=self.cfg.seed + index)
        cfg = TrainConfig(catalog=str(catalog.path), run_dir=str(self.work / name), model=model, recipe=recipe,
                          input_size=self.cfg.input_sizes.get(model), workers=self.cfg.workers, gpu=self.cfg.gpu,
                          cpus_per_worker=self.cfg.cpus_per_worker, init_from=init_from, freeze=freeze)
        return self.stage(name, lambda: train(cfg))

    def ensemble(self, catalog: Catalog, members: list[dict]) -> dict:
        from fer_ray.ensemble.features import run_ensemble

        return self.stage("ensemble", lambda: run_ensemble(
            [m["artifact"] for m in members], catalog, str(self.work / "ensemble"),
            batch_size=self.cfg.ensemble_batch_size, gpu=self.cfg.gpu))

    def transfer(self, source: dict) -> tuple[Catalog, dict]:
        from fer_ray.artifacts import read_meta
        from fer_ray.data.ingest import build_catalog
        from fer_ray.data.sources import make_source

        out = self.work / "kdef-catalog"
        self.stage("kdef-catalog", lambda: build_catalog(
            make_source("kdef", self.cfg.kdef, size=self.cfg.size, face_crop=self.cfg.kdef_face_crop),
            str(out), seed=self.cfg.seed, overwrite=True), done=out / MANIFEST)
        catalog = Catalog.open(out)
        result = self.cnn(catalog, 0, read_meta(source["artifact"])["architecture"], init_from=source["artifact"],
                          freeze=self.cfg.transfer_freeze, epochs=self.cfg.transfer_epochs, name="transfer-kdef")
        return catalog, result

    def score(self, artifact: str) -> str:
        from fer_ray.inference.batch import score_folder

        folder = self.work / "scores"
        out = folder / "scores.parquet"
        # The scores belong to one --score-input: another one (allowed on a rerun) is scored afresh.
        wanted = {"score_input": self.cfg.score_input, "artifact": artifact, "detector": self.cfg.score_detector}
        old = rundir.recorded(folder)
        again = old is not None and bool(rundir.changed(old, wanted))

        def run():
            with rundir.open_run(folder, "scores", wanted, overwrite=again) as scores:
                scores.claim()
                scores.finish(asdict(score_folder(artifact, self.cfg.score_input, str(out), faces="all",
                                                  gpu=self.cfg.gpu, detector=self.cfg.score_detector)))

        self.stage("scores", run, again=again)
        return str(out)

    # ------------------------------------------------------------ report

    def report(self, catalog: Catalog, svm: dict, cnns: list[dict], ensemble: dict, transfer=None) -> dict:
        """The paper's table on the held-out split, with the paper's own figures beside ours.

        Every stage evaluated its artifact on val and test and keeps the metrics in its result,
        the ensemble's with its members' soft vote, so the table is read from those: no model
        runs again here.
        """
        from fer_ray.artifacts import read_meta
        from fer_ray.evaluation.metrics import headline_figures
        from fer_ray.evaluation.report import comparison_table, recall_table

        split = catalog.held_out
        table = [("linear SVM (hinge, L2; swept lambda)", svm["evaluations"][split], PAPER["svm"])]  # name, ours, paper
        for i, cnn in enumerate(cnns):
            architecture = read_meta(cnn["artifact"])["architecture"]
            table.append((f"{architecture} #{i + 1}", cnn["evaluations"][split], PAPER.get(architecture)))
        table += [("soft voting (mean of CNN probabilities)", ensemble["soft_vote"][split], None),
                  ("stacked ensemble (one-vs-rest logistic on concatenated penultimate features)",
                   ensemble["evaluations"][split], PAPER["ensemble"])]
        rows = [(name, m) for name, m, _ in table]
        proto = catalog.protocol(split, "none")
        lines = ["# fer-ray pipeline report", "", "## The paper's table", "",
                 comparison_table(rows, proto), "", "## Recall per emotion", "", recall_table(rows), "",
                 "Paper (Savoiu & Wong, FER2013 test accuracy), for reference; comparable only when the "
                 "catalog above is FER2013:", "", "| model | paper accuracy | ours |", "|---|---|---|"]
        for name, m, p in table:
            lines.append(f"| {name} | {'' if p is None else f'{p:.3f}'} | {m['accuracy']:.4f} |")
        summary = {"split": split, "protocol": proto,
                   "table": [{"model": n, **headline_figures(m),
                              "micro_precision": m["micro"]["precision"], "macro_precision": m["macro"]["precision"],
                              "macro_recall": m["macro"]["recall"], "paper": p,
                              "recall": {k: c["recall"] for k, c in m["per_class"].items()}}
                             for n, m, p in table]}
        if transfer:
            kdef_catalog, result = transfer
            kdef_split = kdef_catalog.held_out
            m = result["evaluations"][kdef_split]
            lines += ["", "## Transfer learning to KDEF", "",
                      comparison_table([("transfer (frozen early stages)", m)], kdef_catalog.protocol(kdef_split, "none")),
                      "", f"Paper: {PAPER['transfer']:.3f} on KDEF."]
            summary["transfer"] = {**headline_figures(m), "paper": PAPER["transfer"]}
        lines += ["", "## Stage timings (s)", "", *(f"- {k}: {v}" for k, v in self.timings.items()), ""]
        (self.work / "report.md").write_text("\n".join(lines))
        (self.work / "report.json").write_text(json.dumps(summary | {"timings": self.timings}, indent=2))
        if is_uri(self.cfg.storage):
            for name in ("report.md", "report.json"):
                upload(self.work / name, f"{self.cfg.storage.rstrip('/')}/{name}")
        return summary

    def check_settings(self) -> None:
        """Claim the work directory: refuse to resume one whose finished stages were made with
        other settings (they would be reused as they are), and a ``--gpu`` the cluster cannot give.
        Before any stage finished there is nothing to mix, so the settings are recorded anew."""
        from fer_ray.runtime import init_ray, require_gpus

        old = rundir.recorded(self.work) or {}
        started = (self.work / "catalog" / MANIFEST).exists()
        keys = (STAGE_SETTINGS + (TRANSFER_SETTINGS if old.get("kdef") else ())) if started else ()
        with rundir.open_run(self.work, "pipeline", self.cfg.model_dump(), keys=keys,
                             flag="--work-dir" if is_uri(self.cfg.storage) else "--storage") as run:
            run.claim()
        if self.cfg.gpu:
            init_ray()
            require_gpus(1)

    def run(self) -> dict:
        t0 = time.perf_counter()
        self.check_settings()
        catalog = self.prepare()
        svm = self.svm(catalog)
        cnns = [self.cnn(catalog, i + 1, m) for i, m in enumerate(self.cfg.models)]
        ensemble = self.ensemble(catalog, cnns)
        best = max(cnns, key=lambda c: c["evaluations"]["val"]["accuracy"])  # the first of equals
        transfer = self.transfer(best) if self.cfg.kdef else None
        summary = self.report(catalog, svm, cnns, ensemble, transfer)
        outputs = {"catalog": str(catalog.path), "svm": svm["artifact"], "cnns": [c["artifact"] for c in cnns],
                   "ensemble": ensemble["artifact"], "report": str(self.work / "report.md")}
        if transfer:
            outputs["transfer"] = transfer[1]["artifact"]
        if self.cfg.score_input:
            outputs["scores"] = self.score(ensemble["artifact"])
        return summary | {"outputs": outputs, "seconds": round(time.perf_counter() - t0, 1),
                          "storage": self.cfg.storage}


def headline(summary: dict) -> str:
    """The table the demo and the job print at the end."""
    rows = [(row["model"], row["accuracy"], row["macro_f1"], row["paper"]) for row in summary["table"]]
    if "transfer" in summary:
        t = summary["transfer"]
        rows.append(("transfer to KDEF", t["accuracy"], t["macro_f1"], t["paper"]))
    width = max(len(name) for name, *_ in rows)
    lines = [f"{'model':<{width}} {'accuracy':>9} {'macro F1':>9} {'paper':>7}"]
    for name, acc, f1, paper in rows:
        lines.append(f"{name:<{width}} {acc:>9.4f} {f1:>9.4f} {'' if paper is None else f'{paper:.3f}':>7}")
    lines.append(f"({summary['protocol']})")
    return "\n".join(lines)
