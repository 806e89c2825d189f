"""The settings of ``fer-ray score``, ``fer-ray predict`` and of a fer-ray Serve app.

``fer-ray score``'s flags and ``score_folder``'s keywords fill ``ScoreConfig``; ``fer-ray
predict``'s and ``fer_ray.predict``'s fill ``PredictConfig``; ``fer-ray serve``'s flags,
``serve run ... key=value`` and a RayService's ``args`` fill ``ServeConfig`` (the deployment)
and ``ServerOptions`` (where the command listens).
Each default is written once, here. Test-time augmentation defaults to ``flip`` where a person
or a client waits on a few faces (predict, serve: +0.4 to +1.3 points on PublicTest for ~1.5 ms a
face, small beside detection) and to ``none`` for bulk scoring, where the model's time per face is the
throughput (benchmarks/RESULTS.md, "Test-time augmentation where users score"). Nothing here imports Ray, torch or FastAPI, so the command
line builds its flags from these quickly.
"""

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

from fer_ray.choices import TTA_MODES
from fer_ray.data.faces import DEFAULT_DETECTOR, DETECTORS, FACE_MODES, MARGINS
from fer_ray.data.preprocess import DEFAULT_MAX_PIXELS

FINITE = {"allow_inf_nan": False}


class ScoreConfig(BaseModel):
    """One ``fer-ray score`` job (``score_folder``)."""

    model_config = ConfigDict(extra="forbid")

    artifact: str
    input: str = Field(description="folder (searched recursively), image or video file, or glob")
    output: str = Field(description="OUT.parquet or OUT.csv (finished parts are kept in OUT.parts/), or OUT/ "
                                    "with the slash: a folder of Parquet parts, nothing assembled")
    faces: Literal[FACE_MODES] = Field("all", description="all/largest: detect faces in photos; none: images "
                                                          "are already face crops")
    batch_size: int = Field(256, ge=1, description="faces per model call")
    gpu: bool = Field(False, description="one GPU per model actor")
    actors: Optional[int] = Field(None, ge=1,
                                  description="actors (default: one per GPU with --gpu, else one per CPU)")
    detector: Literal[DETECTORS] = Field(DEFAULT_DETECTOR, description="face detector: centerface (a CNN with "
                                         "landmarks; faces levelled and framed like FER2013's) or haar (OpenCV's "
                                         "cascade, the old default, kept for one release)")
    small_faces: bool = Field(False, description="centerface: find faces down to about 24 px in a 1024 px "
                                                 "photo (crowds, far-away faces) at about 4x the detection cost")
    # A margin m crops a square (1 + 2m) face sides wide, padding the whole photo by as much as
    # that reaches beyond its edge: memory grows with m squared (--margin 1e5 asked for
    # terabytes). At 1 a crop is already two thirds background on each axis.
    margin: Optional[float] = Field(None, ge=0, le=1, **FINITE,
                                    description="crop enlargement on each side, a fraction of the crop's side "
                                                f"(default: {MARGINS['centerface']} around FER2013's framing for "
                                                f"centerface, {MARGINS['haar']} around the box for haar)")
    tta: Literal[TTA_MODES] = Field("none", description="test-time augmentation: none, flip (the face and its "
                                    "mirror image, 2x the model's time) or tencrop (CNN artifacts, 10x)")
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1, description="images above this are error rows")
    fps: float = Field(2.0, ge=0, le=1000, **FINITE, description="video frames sampled per second (0: every frame)")
    segment_seconds: float = Field(60.0, gt=0, **FINITE, description="videos are cut into segments this long, "
                                   "scored in parallel (each a resumable part)")
    plots: bool = Field(False, description="an emotion-over-time PNG per video in OUT.plots/")
    part_files: int = Field(1000, ge=1, description="at most this many files in a part, the unit of work that "
                                                    "an interruption can lose (parts hold up to 32 photos or "
                                                    "2,048 crops, fewer on average)")
    num_cpus: Optional[int] = Field(None, ge=1, description="local Ray only: CPUs to use")
    overwrite: bool = Field(False, description="discard earlier results for this output")


class PredictConfig(BaseModel):
    """A few images or videos scored in this process (``fer_ray.inference.predict.predict``)."""

    model_config = ConfigDict(extra="forbid")

    faces: Literal[FACE_MODES] = ScoreConfig.model_fields["faces"]  # detected and cropped as score does
    detector: Literal[DETECTORS] = ScoreConfig.model_fields["detector"]
    small_faces: bool = ScoreConfig.model_fields["small_faces"]
    margin: Optional[float] = ScoreConfig.model_fields["margin"]
    tta: Literal[TTA_MODES] = Field("flip", description=ScoreConfig.model_fields["tta"].description)
    fps: float = ScoreConfig.model_fields["fps"]
    top: int = Field(3, ge=1, description="likeliest emotions listed per face")


class ServeConfig(BaseModel):
    """Everything a deployment is built from (``serve run ... key=value`` sets these)."""

    model_config = ConfigDict(validate_by_name=True)  # num_cpus is also --replica-cpus's

    artifact: str
    max_batch_size: int = Field(16, ge=1, description="requests merged into one forward pass")
    batch_wait_timeout_s: float = Field(0.01, ge=0, allow_inf_nan=False, description="how long a batch waits to fill")
    max_ongoing_requests: Optional[int] = Field(None, ge=1, description="prediction requests a replica works on at "
                                                 "once (at least 4x max_batch_size, and 32); more get 503")
    max_queued_requests: int = Field(64, ge=1, description="requests waiting for a busy replica at each caller "
                                     "(Serve's proxy, or the replica's own port with --direct); more get 503")
    replicas: int = Field(1, ge=1, description="copies of the model, each its own Ray actor")
    num_cpus: float = Field(1.0, ge=0, allow_inf_nan=False, description="CPUs per replica (torch uses that many "
                            "threads)", alias="replica_cpus")
    num_gpus: float = Field(0.0, ge=0)
    device: str = "auto"
    max_body_bytes: int = Field(10 * 1024 * 1024, ge=1, description="largest request body")
    max_pixels: int = Field(25_000_000, ge=1, description="larger images are refused (413)")
    max_files: int = Field(32, ge=1, description="files per /predict/batch request")
    body_timeout_s: float = Field(30.0, gt=0, allow_inf_nan=False,
                                  description="deadline for a whole request body to arrive (408 after it)")
    # served photos are detected and cropped as scored ones
    detector: Literal[DETECTORS] = ScoreConfig.model_fields["detector"]
    small_faces: bool = ScoreConfig.model_fields["small_faces"]
    margin: Optional[float] = ScoreConfig.model_fields["margin"]
    tta: Literal[TTA_MODES] = PredictConfig.model_fields["tta"]
    access_log: bool = Field(False, description="log every request (costs CPU on small machines)")

    def ongoing(self) -> int:
        """Prediction requests a replica takes at once: at least a few full batches, or batches never
        fill. Serve's own limit (``max_ongoing_requests``) is a few more (``serve.HEALTH_ROOM``)."""
        return max(self.max_ongoing_requests or 0, 4 * self.max_batch_size, 32)


class ServerOptions(BaseModel):
    """Where ``fer-ray serve`` listens and the local Ray it starts (``run_server``)."""

    model_config = ConfigDict(extra="forbid", validate_by_name=True)

    host: str = Field("127.0.0.1", description="bind address (loopback unless you choose to expose the "
                                                "service, which has no authentication)")
    port: int = Field(8000, ge=1, le=65535, description="HTTP port")
    # not ``num_cpus``: that is each replica's share (ServeConfig), beside it on the command line
    ray_cpus: Optional[int] = Field(None, ge=1, description=ScoreConfig.model_fields["num_cpus"].description,
                                    alias="num_cpus")
    direct: bool = Field(False, description="local Ray, one replica: it answers on --port itself, without the "
                                            "hop through Serve's proxy (Ray Serve's direct ingress; faster on "
                                            "small machines)")
