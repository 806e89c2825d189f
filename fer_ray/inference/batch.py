"""Bulk scoring of image folders on Ray Data: one row per face, resumable, nothing dropped.

The pipeline (plain functions inside, Ray only as the wiring)::

    list_images (driver) -> from_items(paths)
      on CPUs:   -> map_batches(FaceScorer)  actor pool, one per CPU: read, decode, detect,
                                             crop, resize and predict in one process
      with --gpu -> map_batches(detect_batch) CPU tasks: read, decode, detect, crop, resize
                 -> map_batches(FaceScorer)  actor pool: one Predictor per GPU
      -> driver: rows are buffered by path until a file's faces are all in, then written
         as an atomic part file under OUT.parts/; at the end the parts become OUT.

Why parts: an interrupted job (killed, pre-empted, out of memory) keeps every part written
so far, and each part holds only *complete* files, so a rerun with the same output scores
exactly the files that no part holds yet. Ray Data may cut one file's faces across batches,
hence every row carries ``n_faces`` and the driver waits for all of a file's rows. The parts
folder is the record of the job; OUT is rebuilt from it at the end of every run.

Output columns: ``path``, ``face`` (index, largest face first), ``x, y, w, h`` (box in the
original image's pixels), ``emotion``, one probability column per emotion (EMOTIONS order),
``error`` (null when the row is a scored face). A file without a face and an unreadable
file each get exactly one row, with null face/box/probabilities and the reason in ``error``.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from fer_ray.data.files import Entry, display_path, files_under, glob_files
from fer_ray.data.preprocess import IMAGE_EXTENSIONS, has_image_extension
from fer_ray.errors import FerRayError, InputNotFound
from fer_ray.inference.config import ScoreConfig
from fer_ray.inference.crops import NO_FACE, SCHEMA, DetectConfig, FaceScorer, detect_batch, pin_threads
from fer_ray.rundir import RECORD, open_run, write_atomic

OUTPUT_FORMATS = (".parquet", ".csv")
log = logging.getLogger(__name__)


class ScoreError(FerRayError):
    """A scoring job that cannot start as asked (the message says what to change)."""


# ---------------------------------------------------------------------------------------
# Listing inputs
# ---------------------------------------------------------------------------------------

def detect_in_task(batch: dict, config: DetectConfig) -> dict:
    """``detect_batch`` in a Ray task of the --gpu layout, on one thread (``pin_threads``)."""
    pin_threads(1)
    return detect_batch(batch, config)


def list_images(input: str) -> tuple[list[str], int]:
    """Absolute paths of the image files under a folder (recursively) or matching a glob.

    Returns (sorted image paths, number of other files skipped for their extension). Only
    the name decides what is an image here: a text file named ``.jpg``, a broken link or a
    FIFO named ``.png`` is listed, and later gets an error row, so what was asked for is
    always accounted for; so is a folder that cannot be listed, whatever its name. Links are
    followed, each real file listed once however many links lead to it (``files_under``), for
    a folder and a glob alike.
    """
    if not input:  # Path("") is the current folder: an empty --input would score it
        raise ScoreError("--input is empty; name a folder, an image file or a glob")
    root = Path(input)
    if root.is_dir():
        entries = files_under(root)
    elif os.path.lexists(root):
        entries = [Entry(root)]
    else:
        entries = glob_files(input)
        if not entries:
            raise InputNotFound(f"input not found: {input} (a folder, a file or a glob)")
    images, others = set(), 0
    for path, problem in entries:
        if problem or has_image_extension(path.name):
            images.add(os.path.abspath(path))
        else:
            others += 1
    if not images:
        raise InputNotFound(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) in {input}")
    return sorted(images), others


# ---------------------------------------------------------------------------------------
# Driver side: assemble complete files, write parts atomically, consolidate
# ---------------------------------------------------------------------------------------

class FileAssembler:
    """Scored rows in (``scored_table``'s), whole files out: a part holds only complete files.

    Ray Data may cut one file's faces across batches (with ``--gpu``, where detection and the
    model are separate stages), so each row carries its file's ``n_faces`` and a file's rows
    wait here until all of them are in. Arrow does the grouping; no row is touched in Python.
    """

    def __init__(self):
        self.pending: pa.Table | None = None  # rows of files still missing some
        self.ready: list[pa.Table] = []
        self.ready_files = 0

    def add(self, rows: pa.Table) -> None:
        if self.pending is not None:
            rows = pa.concat_tables([self.pending, rows], promote_options="default")
        seen = rows.group_by("path").aggregate([("path", "count"), ("n_faces", "max")])
        whole = seen.filter(pc.equal(seen["path_count"], seen["n_faces_max"]))["path"]
        done = pc.is_in(rows["path"], value_set=whole.combine_chunks())
        self.ready.append(rows.filter(done).select(SCHEMA.names).cast(SCHEMA))
        self.pending = rows.filter(pc.invert(done))
        self.ready_files += len(whole)

    def take(self) -> tuple[pa.Table, int]:
        """The whole files so far (in the output's schema) and how many they are."""
        table, files = pa.concat_tables(self.ready) if self.ready else SCHEMA.empty_table(), self.ready_files
        self.ready, self.ready_files = [], 0
        return table, files

    @property
    def pending_files(self) -> int:
        return 0 if self.pending is None else pc.count_distinct(self.pending["path"]).as_py()


def write_table(table: pa.Table, path: Path) -> None:
    """Parquet or CSV, by ``path``'s suffix, written atomically."""
    csv = path.suffix.lower() == ".csv"
    write_atomic(path, lambda tmp: pacsv.write_csv(table, str(tmp)) if csv else pq.write_table(table, str(tmp)))


class PartStore:
    """The ``OUT.parts/`` folder: a run directory (``fer_ray.rundir``, locked while a job writes
    it) of ``part-NNNNNN.parquet`` files."""

    def __init__(self, folder: Path):
        self.folder = folder

    def parts(self) -> list[Path]:
        return sorted(self.folder.glob("part-*.parquet"))

    def scored_paths(self) -> set[str]:
        done: set[str] = set()
        for part in self.parts():
            done.update(pq.read_table(part, columns=["path"]).column("path").to_pylist())
        return done

    def write(self, table: pa.Table) -> Path:
        existing = [int(p.stem.split("-")[1]) for p in self.parts()]
        path = self.folder / f"part-{max(existing, default=-1) + 1:06d}.parquet"
        write_table(table, path)
        return path

    def consolidate(self, output: Path, paths: set[str]) -> pa.Table:
        """The parts' rows of ``paths`` (this run's input) -> OUT, sorted by path and face.

        Rows of files no longer in the input (deleted, or scored for another input into the
        same output) stay in the parts but not in OUT. A file in two parts would be a bug in
        the resume logic, so it is refused rather than silently deduplicated."""
        tables = [pq.read_table(p, schema=SCHEMA) for p in self.parts()]
        table = pa.concat_tables(tables) if tables else SCHEMA.empty_table()
        table = table.filter(pc.is_in(table.column("path"), pa.array(sorted(paths), pa.string())))
        table = table.sort_by([("path", "ascending"), ("face", "ascending")])
        keys = list(zip(table.column("path").to_pylist(), table.column("face").to_pylist()))
        if len(set(keys)) != len(keys):
            raise RuntimeError(f"duplicate rows across parts in {self.folder}")
        write_table(table, output)
        return table


@dataclass
class ScoreSummary:
    output: str
    files: int = 0              # distinct paths in the output
    faces: int = 0              # scored faces
    no_face: int = 0            # files without a face
    errors: int = 0             # files that could not be used
    scored_now: int = 0         # files scored by this run
    already_scored: int = 0     # files skipped because a part already held them
    skipped_non_images: int = 0
    seconds: float = 0.0        # this run's pipeline, start-up included
    ray_seconds: float = 0.0    # of which starting (or joining) Ray
    startup_seconds: float = 0.0  # of which everything before each actor's first files came back scored
    steady_files: int = 0       # files scored after that ...
    steady_seconds: float = 0.0  # ... and in how long: the rate once running
    images_per_s: float = 0.0   # that steady rate, or (when all came back at once) the rate after Ray start
    error_examples: list = field(default_factory=list)

    def line(self) -> str:
        timing = f"in {self.seconds:.1f} s"
        if self.scored_now:
            steady = (f"then {self.steady_files} files in {self.steady_seconds:.1f} s ({rate(self.images_per_s)} img/s)"
                      if self.steady_files else
                      f"all of them in the first results ({rate(self.images_per_s)} img/s after Ray start)")
            timing += (f": start-up {self.startup_seconds:.1f} s (Ray {self.ray_seconds:.1f} s, model actors "
                       f"and their first results {self.startup_seconds - self.ray_seconds:.1f} s), {steady}")
        return (f"score: {self.files} files, {self.faces} faces, {self.no_face} without a face, "
                f"{self.errors} errors; this run {self.scored_now} files {timing}; "
                f"{self.already_scored} already scored -> {self.output}")


def rate(per_second: float) -> str:
    """Three significant figures, without an exponent: 0.42, 5.71, 168, 1180."""
    return f"{per_second:.0f}" if per_second >= 100 else f"{per_second:.3g}"


def _count(table: pa.Table, summary: ScoreSummary) -> None:
    errors = table.column("error").to_pylist()
    summary.files = len(set(table.column("path").to_pylist()))
    summary.faces = sum(e is None for e in errors)
    summary.no_face = sum(e == NO_FACE for e in errors)
    bad = [(p, e) for p, e in zip(table.column("path").to_pylist(), errors) if e not in (None, NO_FACE)]
    summary.errors = len(bad)
    summary.error_examples = [f"{p}: {e}" for p, e in bad[:5]]


def parts_folder(output: Path) -> Path:
    return output.with_name(output.name + ".parts")


@dataclass(frozen=True)
class ResourcePlan:
    actors: int
    actor_cpus: float
    actor_gpus: int
    device: str
    threads: int          # torch threads per actor
    task_cpus: float      # 0: no detection tasks, the actors detect (``fused``)
    files_per_task: int   # files per detection task, or per actor call when fused

    @property
    def fused(self) -> bool:
        return self.task_cpus == 0


def plan_resources(cpus: int, gpus: int, mode: str, gpu: bool = False, actors: int | None = None) -> ResourcePlan:
    """How to share the cluster between reading/detecting and the model.

    On CPUs each actor does everything for its files (read, decode, detect, crop, predict) on
    its own CPUs: one actor per CPU by default, single-threaded. Splitting the work into
    detection tasks and model actors, as on GPUs, would ship every crop through the object
    store and leave one side's CPUs waiting for the other's whenever their costs differ (a
    photo's detection is ~100x its model time, a crop's decoding ~1/10). With ``--gpu`` the
    model actors hold the GPUs and detection runs in CPU tasks beside them; everything must
    fit at once, or Ray Data waits forever for CPUs an actor holds, so actors' CPUs plus at
    least one task's never exceed the cluster's. A call must hold far more work than the
    ~50-100 ms Ray Data spends around each on a small machine: 1,024 crops (~0.2 s to decode;
    on FER2013, 256 per task made the whole pipeline 25% slower) or 16 photos (~2 s to detect).
    """
    cpus = max(1, cpus)
    per_call = 1024 if mode == "none" else 16
    if not gpu:
        n = actors or cpus
        actor_cpus = math.floor(cpus / n * 1000) / 1000
        return ResourcePlan(n, actor_cpus, 0, "cpu", max(1, int(actor_cpus)), 0.0, per_call)
    if gpus < 1:
        raise ScoreError("--gpu was given but the Ray cluster has no GPU")
    if actors and actors > gpus:
        raise ScoreError(f"--actors {actors} with --gpu needs {actors} GPUs; the Ray cluster has {gpus}")
    n = actors or gpus
    actor_cpus = math.floor(min(1.0, (cpus - 0.5) / n) * 1000) / 1000  # half a CPU at least is left for detection
    free = cpus - n * actor_cpus
    task_cpus = math.floor(free / math.ceil(free) * 1000) / 1000  # as many tasks as free cores
    return ResourcePlan(n, actor_cpus, 1, "cuda", max(1, int(actor_cpus)), task_cpus, per_call)


def input_blocks(files: int, per_call: int) -> tuple[int, int]:
    """How many blocks to cut the input paths into (at most 1,000), and how many files a call
    then takes (at most ``per_call``).

    A Ray Data task takes input blocks until it holds a call's files: with blocks a few files
    short of that, every task would be two calls, and the first results and the last task
    twice as long (on FER2013, 979-file blocks and 1,000-file calls did that). So a call takes
    the smallest block's files; a block one file longer adds a 1-file call.
    """
    blocks = max(1, min(math.ceil(files / per_call), 1000))
    return blocks, min(per_call, max(1, files // blocks))


def score_folder(artifact: str, input: str, output: str, **settings) -> ScoreSummary:
    """Score every image under ``input`` into ``output`` (.parquet or .csv); see the module doc.
    ``settings`` are ``ScoreConfig``'s other fields (faces, batch_size, part_files, ...)."""
    from fer_ray.inference.predictor import Predictor

    cfg = ScoreConfig(artifact=artifact, input=input, output=output, **settings)
    out = Path(output)
    if out.suffix.lower() not in OUTPUT_FORMATS:
        unnamed = "; name the file too, e.g. scores" + out.name if out.name.lower() in OUTPUT_FORMATS else ""
        raise ScoreError(f"--output must end in {' or '.join(OUTPUT_FORMATS)}, got {out.name}{unnamed}")
    if out.is_dir():
        raise ScoreError(f"--output {out} is a folder; name a file inside it, e.g. {out / ('scores' + out.suffix)}")
    if out.exists() and not cfg.overwrite and not (parts_folder(out) / RECORD).is_file():
        # Only a file this command wrote (its parts and run.json beside it) is rewritten unasked.
        raise ScoreError(f"{out} exists and is no earlier result of fer-ray score (no {parts_folder(out).name}/"
                         f"{RECORD} beside it); pass --overwrite to replace it, or choose another --output")
    # Loaded whole here, as each model actor will load it: a broken artifact (weights that do
    # not fit, a pickle for weights) or a --tta it does not take is one error line now, not
    # actor tracebacks after Ray starts.
    predictor = Predictor(artifact, device="cpu")
    predictor.check_tta(cfg.tta)
    meta = predictor.meta
    config = DetectConfig(mode=cfg.faces, image_size=int(meta["image_size"]), margin=cfg.margin,
                          max_pixels=cfg.max_pixels, detector=cfg.detector, small_faces=cfg.small_faces)
    files, others = list_images(input)
    shown = {f: display_path(f) for f in files}
    store = PartStore(parts_folder(out))
    summary = ScoreSummary(output=str(out), skipped_non_images=others)
    # The model is its weights' checksum, not its path: a moved artifact resumes, a retrained one does not.
    job = {"weights_sha256": meta.get("weights_sha256"), "tta": cfg.tta,
           **{k: v for k, v in asdict(config).items() if k != "image_size"}}
    # Under the lock, --overwrite never pulls a running job's parts from under it.
    with open_run(store.folder, "score", job, overwrite=cfg.overwrite, flag="--output", lock="scoring job") as run:
        run.claim()
        if cfg.overwrite:
            out.unlink(missing_ok=True)
        done = store.scored_paths()
        todo = [f for f in files if shown[f] not in done]
        summary.already_scored = len(files) - len(todo)
        log.info(f"score: {len(files)} image files ({others} other files ignored), "
                 f"{summary.already_scored} already scored, {len(todo)} to score")
        t0 = time.time()
        if todo:
            _run_pipeline(todo, cfg, config, store, summary, t0)
        summary.seconds = time.time() - t0
        if summary.steady_files:
            summary.images_per_s = summary.steady_files / max(summary.steady_seconds, 1e-9)
        elif summary.scored_now:
            summary.images_per_s = summary.scored_now / max(summary.seconds - summary.ray_seconds, 1e-9)
        _count(store.consolidate(out, set(shown.values())), summary)
    log.info(summary.line())
    for example in summary.error_examples:
        log.info(f"  error: {example}")
    return summary


def _run_pipeline(todo: list[str], cfg: ScoreConfig, config: DetectConfig, store: PartStore,
                  summary: ScoreSummary, t0: float) -> None:
    import ray

    from fer_ray.runtime import init_ray, map_batches_on_actors

    init_ray(cfg.num_cpus)
    summary.ray_seconds = time.time() - t0
    resources = ray.cluster_resources()
    plan = plan_resources(int(resources.get("CPU", 1)), int(resources.get("GPU", 0)), config.mode, cfg.gpu, cfg.actors)
    part_files = cfg.part_files
    # No stage may gather more than a part's worth of files before passing them on, or a part
    # smaller than a detection task (or a model batch) would be written only once all of it is
    # done, and an interrupted small job would keep nothing.
    files_per_task, batch_size = min(plan.files_per_task, part_files), min(cfg.batch_size, part_files)
    blocks, files_per_task = input_blocks(len(todo), files_per_task)
    if plan.fused:
        log.info(f"score: {plan.actors} actor(s) reading, detecting and scoring {files_per_task} files at a time "
                 f"({plan.actor_cpus} CPU each)")
    else:
        log.info(f"score: {plan.actors} model actor(s) on {plan.device} ({plan.actor_cpus} CPU, {plan.actor_gpus} GPU "
                 f"each), detection tasks of {files_per_task} files at {plan.task_cpus} CPU")
    paths = ray.data.from_items([{"path": display_path(p), "file": os.fsencode(p)} for p in todo],
                                override_num_blocks=blocks)
    scorer = {"artifact": cfg.artifact, "device": plan.device, "batch_size": batch_size, "threads": plan.threads,
              "tta": cfg.tta}
    if not plan.fused:
        paths = paths.map_batches(detect_in_task, fn_kwargs={"config": config}, batch_size=files_per_task,
                                  num_cpus=plan.task_cpus)
    ds = map_batches_on_actors(paths, FaceScorer, plan.actors,
                               fn_constructor_kwargs=scorer | ({"detect": config} if plan.fused else {}),
                               batch_size=files_per_task if plan.fused else batch_size,
                               num_cpus=plan.actor_cpus, num_gpus=plan.actor_gpus)
    assembler = FileAssembler()
    last_log = time.time()
    # When as many results came back as there are actors, and how many files were done by then:
    # the steady phase, every actor running, starts there. The actors' first results arrive
    # together, so a clock started at the very first would credit the others' to it.
    first, results = None, 0

    def flush() -> None:
        rows, n = assembler.take()
        if n:
            store.write(rows)
            summary.scored_now += n

    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        assembler.add(batch)
        results += 1
        if first is None and results >= plan.actors:
            first = (time.time(), summary.scored_now + assembler.ready_files)
            summary.startup_seconds, last_log = first[0] - t0, first[0]
        if assembler.ready_files >= part_files:
            flush()
        done = summary.scored_now + assembler.ready_files
        if first is not None and time.time() - last_log > 5 and done < len(todo):  # the summary follows the last files
            last_log = time.time()
            steady = rate((done - first[1]) / max(last_log - first[0], 1e-3))
            log.info(f"score: {done}/{len(todo)} files ({steady} img/s since every actor's first results)")
    flush()
    if first is None:  # fewer results than actors: all of it was start-up
        summary.startup_seconds = time.time() - t0
    else:
        summary.steady_files, summary.steady_seconds = summary.scored_now - first[1], time.time() - first[0]
    if assembler.pending_files:
        raise RuntimeError(f"{assembler.pending_files} files lost rows in the pipeline")
