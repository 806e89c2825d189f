"""``fer-ray demo``: the whole pipeline on an embedded local Ray and synthetic faces.

prepare -> SVM (short sweep) -> two small CNNs -> ensemble -> report -> score a folder of
generated photos, then print where every output is and the headline table. Sized for a
laptop: about 3 minutes on 2 CPUs.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from fer_ray.data.config import PrepareConfig
from fer_ray.data.preprocess import encode_png
from fer_ray.data.synthetic import balanced_labels, synthetic_faces
from fer_ray.pipeline import Pipeline, PipelineConfig, headline
from fer_ray.rundir import open_run

log = logging.getLogger(__name__)


class DemoConfig(BaseModel):
    """``fer-ray demo``'s settings: sized for about 3 minutes on 2 CPUs."""

    model_config = ConfigDict(extra="forbid")

    output: str = Field("demo-output", description="where every output goes (rerun to resume)")
    count: int = Field(PipelineConfig.model_fields["count"].default, ge=1, description="synthetic faces")
    epochs: int = Field(8, ge=1, description="epochs per small CNN")
    num_cpus: Optional[int] = PrepareConfig.model_fields["num_cpus"]
    overwrite: bool = Field(False, description="start again: clear --output if it holds a demo run")


def write_demo_photos(folder: Path, count: int = 24, seed: int = 7, tries: int = 20) -> int:
    """Photos to score: faces of ~190 px on 640x480 backgrounds (some with two faces, one
    with none), in nested folders, plus a corrupt file, to show every kind of output row.

    A drawn face is not always found by OpenCV's cascade; each photo is redrawn with the next
    faces (up to ``tries`` times) until the detector finds exactly the faces placed, so the
    demo's "without a face" count is the one photo drawn without any."""
    from fer_ray.data.faces import HaarDetector

    rng = np.random.default_rng(seed)
    detector = HaarDetector()
    labels = balanced_labels(7 * 8, seed)
    yy, xx = np.mgrid[0:480, 0:640]
    background = 70 + 80 * xx / 640 + 40 * yy / 480
    used = 0
    for i in range(count):
        n = 0 if i == 0 else (2 if i % 4 == 0 else 1)
        for _ in range(tries):
            img = np.clip(background + rng.normal(0, 5, background.shape), 0, 255).astype(np.uint8)
            for k in range(n):
                x = 30 + k * 360 + int(rng.integers(0, 40))
                y = int(rng.integers(20, 260))
                label = labels[used % len(labels)]
                img[y : y + 192, x : x + 192] = synthetic_faces(np.array([label]), 192, seed, start=used)[0]
                used += 1
            if len(detector.detect(img)) == n:
                break
        sub = folder / f"set-{i % 3}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"photo-{i:03d}.png").write_bytes(encode_png(img))
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG")
    return count + 1


def run_demo(**settings) -> dict:
    """Run the demo; ``settings`` are ``DemoConfig``'s.

    ``--output`` is the demo's own run directory, holding two things side by side: the photos
    it scores (an input) and the pipeline's storage (which the pipeline claims). An input never
    sits inside a folder a stage claims, so a rerun finds both as it left them and resumes.
    """
    from fer_ray.runtime import init_ray

    cfg = DemoConfig(**settings)
    with open_run(cfg.output, "demo", cfg.model_dump(), overwrite=cfg.overwrite, keys=("count", "epochs"),
                  flag="--output") as run:
        out = run.claim()
        photos = out / "photos"
        if not photos.is_dir():  # written whole under another name first: an interrupted write is redone
            with open_run(photos, aside=True) as partial:
                write_demo_photos(partial.claim())
        init_ray(cfg.num_cpus)
        # Synthetic faces want a weaker penalty than FER2013 (their best lambda is ~0.01). They are
        # drawn shapes: the Haar cascade takes them for faces, CenterFace (trained on real faces)
        # rarely does, so the demo's photos are scored with the cascade.
        pipeline = PipelineConfig(storage=str(out / "pipeline"), source="synthetic", count=cfg.count,
                                  models=("small_cnn", "small_cnn"), epochs=cfg.epochs, batch_size=32, lr=0.05,
                                  workers=1, svm_samples=3, svm_lambda=(0.01, 10.0), score_input=str(photos),
                                  score_detector="haar")
        summary = Pipeline(pipeline).run()
    log.info("")
    log.info(f"demo finished in {summary['seconds']:.0f} s; outputs under {out}:")
    for name, path in {"photos": str(photos), **summary["outputs"]}.items():
        log.info(f"  {name:<9} {path if isinstance(path, str) else ', '.join(path)}")
    log.info("")
    log.info(headline(summary))
    return summary
