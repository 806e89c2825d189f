"""Bulk scoring of image and video folders on Ray Data: one row per face, resumable, nothing dropped.

The pipeline (plain functions inside, Ray only as the wiring)::

    driver: write_listing    walks the input as a stream into blocks (photos, or a video's time
                             segments) in a listing (``Destination.job``): the path list is never in memory
    Ray Data: from_items(where each block still to score is in the listing: two ints a block)
      on CPUs:   -> map_batches(BlockScorer)   actor pool, one per CPU: reads, decodes, detects,
                                              crops, predicts a block and writes its part
      with --gpu -> map_batches(detect_in_task) CPU tasks: read, decode, detect, crop, resize
                 -> map_batches(BlockScorer)   actor pool, one Predictor per GPU, writes the parts
    driver: counts finished blocks (one small row each); at the end ``assemble`` streams the
            parts into OUT, giving each video's faces their track ids (or, when OUT is a folder
            of parts, gives the video parts their track ids in place)

The actors write the parts, so no scored row passes through the driver: its memory and its
one core do not grow with the job (benchmarks/RESULTS.md, "Scoring with the driver out of the
data path"). See ``blocks`` for how blocks are cut and named, ``parts`` for resume.

Output columns: ``path``, ``frame`` and ``time`` (a video's frame index and its time in seconds;
null for photos), ``face`` (index, largest face first), ``track`` (a face followed across a
video's frames), ``x, y, w, h`` (box in the original image's pixels), ``detector_score`` and the
landmarks, ``emotion``, one probability column per emotion (EMOTIONS order), ``error`` (null
when the row is a scored face). A photo or a video frame without a face and an unreadable file
each get one row, with null face/box/probabilities and the reason in ``error``.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from fer_ray.errors import FerRayError
from fer_ray.inference.assemble import Counts, assemble, tracks_path
from fer_ray.inference.blocks import (BlockScorer, Listing, PartStore, block_sizes, check_input, detect_in_task,
                                     listed_keys, write_listing)
from fer_ray.inference.config import ScoreConfig
from fer_ray.inference.crops import DetectConfig
from fer_ray.rundir import RECORD, open_run

OUTPUT_FORMATS = (".parquet", ".csv")
log = logging.getLogger(__name__)


class ScoreError(FerRayError):
    """A scoring job that cannot start as asked (the message says what to change)."""


@dataclass
class ScoreSummary:
    output: str
    files: int = 0              # photos (image files) in the output
    videos: int = 0
    frames: int = 0             # sampled video frames in the output
    faces: int = 0              # scored faces
    no_face: int = 0            # photos and video frames without a face
    errors: int = 0             # files that could not be used
    scored_now: int = 0         # images (photos, video frames) scored by this run
    already_scored: int = 0     # blocks skipped because a part already held them
    skipped_non_images: int = 0
    seconds: float = 0.0        # this run's pipeline, start-up included
    ray_seconds: float = 0.0    # of which starting (or joining) Ray
    startup_seconds: float = 0.0  # of which everything before each actor's first files came back scored
    steady_files: int = 0       # images scored after that ...
    steady_seconds: float = 0.0  # ... and in how long: the rate once running
    images_per_s: float = 0.0   # that steady rate, or (when all came back at once) the rate after Ray start
    error_examples: list = field(default_factory=list)

    def line(self) -> str:
        timing = f"in {self.seconds:.1f} s"
        if self.scored_now:
            steady = (f"then {self.steady_files} images in {self.steady_seconds:.1f} s "
                      f"({rate(self.images_per_s)} img/s)"
                      if self.steady_files else
                      f"all of them in the first results ({rate(self.images_per_s)} img/s after Ray start)")
            timing += (f": start-up {self.startup_seconds:.1f} s (Ray {self.ray_seconds:.1f} s, model actors "
                       f"and their first results {self.startup_seconds - self.ray_seconds:.1f} s), {steady}")
        videos = f" and {self.videos} videos ({self.frames} frames)" if self.videos else ""
        return (f"score: {self.files} files{videos}, {self.faces} faces, {self.no_face} without a face, "
                f"{self.errors} errors; this run {self.scored_now} images {timing}; "
                f"{self.already_scored} parts already scored -> {self.output}")


def rate(per_second: float) -> str:
    """Three significant figures, without an exponent: 0.42, 5.71, 168, 1180."""
    return f"{per_second:.0f}" if per_second >= 100 else f"{per_second:.3g}"


def parts_folder(output: Path) -> Path:
    return output.with_name(output.name + ".parts")


JOB_FOLDER = "_job"  # a folder of parts' own records: readers of the folder skip names starting with "_"


@dataclass(frozen=True)
class Destination:
    """Where a job writes: OUT, one .parquet or .csv file assembled from the parts kept in
    ``OUT.parts/`` (beside the job's listing and records); or, asked with a trailing ``/``, the
    folder OUT/ of the parts themselves, a Parquet dataset that Ray Data, Spark, DuckDB, pandas
    or pyarrow read as one table, with nothing assembled and the job's records in ``OUT/_job/``.
    """

    path: Path
    folder: bool

    @classmethod
    def of(cls, output: str) -> Destination:
        """``--output`` checked: one line saying what to change (before anything is written)."""
        out = Path(output)
        if output.endswith(("/", os.sep)) or out.is_dir():
            if out.is_file():
                raise ScoreError(f"--output {output} names a folder of parts, but {out} is a file")
            if out.is_dir() and any(out.iterdir()) and not (out / JOB_FOLDER / RECORD).is_file():
                raise ScoreError(f"--output {out}/ holds files that fer-ray score did not write (no {JOB_FOLDER}/"
                                 f"{RECORD}); choose a new or empty folder")
            return cls(out, True)
        if out.suffix.lower() not in OUTPUT_FORMATS:
            unnamed = "; name the file too, e.g. scores" + out.name if out.name.lower() in OUTPUT_FORMATS else ""
            raise ScoreError(f"--output must end in {' or '.join(OUTPUT_FORMATS)} (one file) or / (a folder of "
                             f"Parquet parts), got {out.name}{unnamed}")
        return cls(out, False)

    @property
    def parts(self) -> Path:
        return self.path if self.folder else parts_folder(self.path)

    @property
    def job(self) -> Path:
        """The job's run directory (``rundir``): its listing, settings, lock and result."""
        return self.path / JOB_FOLDER if self.folder else self.parts

    @property
    def tracks(self) -> Path:
        return self.path / "_tracks.parquet" if self.folder else tracks_path(self.path)

    @property
    def plots(self) -> Path:
        return self.path / "_plots" if self.folder else self.path.with_name(f"{self.path.stem}.plots")


@dataclass(frozen=True)
class ResourcePlan:
    actors: int
    actor_cpus: float
    actor_gpus: int
    device: str
    threads: int          # torch threads per actor
    task_cpus: float      # 0: no detection tasks, the actors detect (``fused``)

    @property
    def fused(self) -> bool:
        return self.task_cpus == 0


def plan_resources(cpus: int, gpus: int, gpu: bool = False, actors: int | None = None) -> ResourcePlan:
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
    if not gpu:
        n = actors or cpus
        actor_cpus = math.floor(cpus / n * 1000) / 1000
        return ResourcePlan(n, actor_cpus, 0, "cpu", max(1, int(actor_cpus)), 0.0)
    if gpus < 1:
        raise ScoreError("--gpu was given but the Ray cluster has no GPU")
    if actors and actors > gpus:
        raise ScoreError(f"--actors {actors} with --gpu needs {actors} GPUs; the Ray cluster has {gpus}")
    n = actors or gpus
    actor_cpus = math.floor(min(1.0, (cpus - 0.5) / n) * 1000) / 1000  # half a CPU at least is left for detection
    free = cpus - n * actor_cpus
    task_cpus = math.floor(free / math.ceil(free) * 1000) / 1000  # as many tasks as free cores
    return ResourcePlan(n, actor_cpus, 1, "cuda", max(1, int(actor_cpus)), task_cpus)


def score_folder(artifact: str, input: str, output: str, **settings) -> ScoreSummary:
    """Score every image and video under ``input`` into ``output`` (.parquet or .csv, or a folder
    of parts: see ``Destination``); see the module doc. ``settings`` are ``ScoreConfig``'s other
    fields (faces, fps, part_files, ...)."""
    from fer_ray.inference.predictor import Predictor

    cfg = ScoreConfig(artifact=artifact, input=input, output=output, **settings)
    dest = Destination.of(output)
    out = dest.path
    if not dest.folder and out.exists() and not cfg.overwrite and not (dest.job / RECORD).is_file():
        # Only a file this command wrote (its parts and run.json beside it) is rewritten unasked.
        raise ScoreError(f"{out} exists and is no earlier result of fer-ray score (no {dest.job.name}/"
                         f"{RECORD} beside it); pass --overwrite to replace it, or choose another --output")
    # Loaded whole here, as each model actor will load it: a broken artifact (weights that do
    # not fit, a pickle for weights) or a --tta it does not take is one error line now, not
    # actor tracebacks after Ray starts.
    predictor = Predictor(artifact, device="cpu")
    predictor.check_tta(cfg.tta)
    config = DetectConfig(mode=cfg.faces, image_size=predictor.image_size, margin=cfg.margin,
                          max_pixels=cfg.max_pixels, detector=cfg.detector, small_faces=cfg.small_faces)
    check_input(input)
    store = PartStore(dest.parts)
    summary = ScoreSummary(output=f"{out}/" if dest.folder else str(out))
    sizes = block_sizes(cfg.faces, cfg.part_files)
    # The model is its weights' checksum, not its path: a moved artifact resumes, a retrained one
    # does not. Blocks are named by what they hold: another --part-files cuts other blocks, which
    # are scored again (OUT is assembled from this run's blocks only).
    job = {"weights_sha256": predictor.meta.get("weights_sha256"), "tta": cfg.tta, "fps": cfg.fps,
           "segment_seconds": cfg.segment_seconds, **{k: v for k, v in asdict(config).items() if k != "image_size"}}
    # Under the lock, --overwrite never pulls a running job's parts from under it.
    with open_run(dest.job, "score", job, overwrite=cfg.overwrite, flag="--output", lock="scoring job") as run:
        run.claim()
        if cfg.overwrite and dest.folder:
            store.keep_only(set())
        elif cfg.overwrite:
            out.unlink(missing_ok=True)
        listed = time.time()
        listing = write_listing(input, dest.job, sizes, cfg.segment_seconds, store.done())
        summary.skipped_non_images = listing.others
        summary.already_scored = listing.blocks - listing.todo_blocks
        videos = f" and {listing.videos} videos" if listing.videos else ""
        log.info(f"score: {listing.images} image files{videos} ({listing.others} other files ignored) in "
                 f"{listing.blocks} parts, {summary.already_scored} already scored, {listing.todo_blocks} to score "
                 f"(listed in {time.time() - listed:.1f} s)")
        t0 = time.time()
        if listing.todo_blocks:
            _run_pipeline(listing, cfg, config, store, summary, t0)
        summary.seconds = time.time() - t0
        if summary.steady_files:
            summary.images_per_s = summary.steady_files / max(summary.steady_seconds, 1e-9)
        elif summary.scored_now:
            summary.images_per_s = summary.scored_now / max(summary.seconds - summary.ray_seconds, 1e-9)
        plots = dest.plots if cfg.plots else None
        counts = assemble(listing.path, store, None if dest.folder else out, dest.tracks, plots)
        if dest.folder:  # the parts are what readers read: none of another input or another cut
            store.keep_only(listed_keys(listing.path))
    _take_counts(summary, counts)
    log.info(summary.line())
    for example in summary.error_examples:
        log.info(f"  error: {example}")
    if counts.videos:
        log.info(f"score: each video's tracks -> {dest.tracks}" + (f"; timelines -> {plots}/" if plots else ""))
    return summary


def _take_counts(summary: ScoreSummary, counts: Counts) -> None:
    for name in ("files", "videos", "frames", "faces", "no_face", "errors", "error_examples"):
        setattr(summary, name, getattr(counts, name))


def _run_pipeline(listing: Listing, cfg: ScoreConfig, config: DetectConfig, store: PartStore,
                  summary: ScoreSummary, t0: float) -> None:
    import ray

    from fer_ray.runtime import init_ray, map_batches_on_actors

    init_ray(cfg.num_cpus)
    summary.ray_seconds = time.time() - t0
    resources = ray.cluster_resources()
    plan = plan_resources(int(resources.get("CPU", 1)), int(resources.get("GPU", 0)), cfg.gpu, cfg.actors)
    if plan.fused:
        log.info(f"score: {plan.actors} actor(s) reading, detecting and scoring a part at a time "
                 f"({plan.actor_cpus} CPU each)")
    else:
        log.info(f"score: {plan.actors} model actor(s) on {plan.device} ({plan.actor_cpus} CPU, {plan.actor_gpus} GPU "
                 f"each), detection tasks at {plan.task_cpus} CPU")
    # One block a call, each call writing one part. The driver hands out where each block is in
    # the listing, not its paths; a read_parquet of the listing would need CPUs the actors hold.
    ds = ray.data.from_items(list(listing.todo_refs()), override_num_blocks=min(listing.todo_blocks, 1000))
    scorer = {"artifact": cfg.artifact, "parts": str(store.folder), "todo": str(listing.todo), "device": plan.device,
              "batch_size": cfg.batch_size, "threads": plan.threads, "tta": cfg.tta, "fps": cfg.fps}
    if not plan.fused:
        ds = ds.map_batches(detect_in_task, fn_kwargs={"todo": str(listing.todo), "config": config, "fps": cfg.fps,
                                                       "chunk": cfg.batch_size},
                            batch_size=1, num_cpus=plan.task_cpus)
    ds = map_batches_on_actors(ds, BlockScorer, plan.actors,
                               fn_constructor_kwargs=scorer | ({"detect": config} if plan.fused else {}),
                               batch_size=1, num_cpus=plan.actor_cpus, num_gpus=plan.actor_gpus)
    last_log, blocks = time.time(), 0
    # When as many results came back as there are actors, and how many images were done by then:
    # the steady phase, every actor running, starts there. The actors' first results arrive
    # together, so a clock started at the very first would credit the others' to it.
    first, results = None, 0
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        blocks += len(batch["key"])
        summary.scored_now += int(batch["images"].sum())
        results += 1
        if first is None and results >= plan.actors:
            first = (time.time(), summary.scored_now)
            summary.startup_seconds, last_log = first[0] - t0, first[0]
        if first is not None and time.time() - last_log > 5 and blocks < listing.todo_blocks:
            last_log = time.time()
            steady = rate((summary.scored_now - first[1]) / max(last_log - first[0], 1e-3))
            log.info(f"score: {blocks}/{listing.todo_blocks} parts, {summary.scored_now} images "
                     f"({steady} img/s since every actor's first results)")
    if first is None:  # fewer results than actors: all of it was start-up
        summary.startup_seconds = time.time() - t0
    else:
        summary.steady_files, summary.steady_seconds = summary.scored_now - first[1], time.time() - first[0]
    if blocks != listing.todo_blocks:
        raise RuntimeError(f"{listing.todo_blocks - blocks} blocks came back unscored from the pipeline")
