"""The settings of ``fer-ray sweep svm`` and ``sweep cnn``: their flags, ``run.json`` and resume
all come from these fields (see ``fer_ray.training.config``). Nothing here imports Ray."""

import math
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, model_validator

from fer_ray.baseline.config import SvmFit
from fer_ray.choices import MODEL_NAMES
from fer_ray.errors import FerRayError
from fer_ray.training.config import FINITE, TrainConfig


def _increasing(*pairs) -> None:
    for low_name, low, high_name, high in pairs:
        if not 0 < low < high < math.inf:
            raise FerRayError(f"need 0 < --{low_name} < --{high_name} < inf, got {low}, {high}")


class Sweep(BaseModel):
    """What every sweep has: where it runs, and its trials."""

    model_config = ConfigDict(extra="forbid")

    catalog: str
    run_dir: str = Field(description="rerunning with the same run dir resumes the sweep")
    overwrite: bool = Field(False, description=TrainConfig.model_fields["overwrite"].description)
    concurrency: Optional[int] = Field(None, ge=1, description="trials at a time (default: what the cluster fits)")
    seed: int = Field(0, description="seed of the random search")


class SvmSweep(Sweep, SvmFit):
    """The SVM's lambda, log-uniform, chosen by val accuracy."""

    samples: int = Field(6, ge=1, description="trials")
    # chosen on FER2013: below ~0.3 a hinge fit there takes many minutes
    lambda_min: float = 0.3
    lambda_max: float = 3.0

    @model_validator(mode="after")
    def _range(self):
        _increasing(("lambda-min", self.lambda_min, "lambda-max", self.lambda_max))
        return self


class CnnSweep(Sweep):
    """The CNN's learning rate and weight decay (and optionally batch size and label smoothing),
    with ASHA stopping the weak trials early."""

    samples: int = Field(4, ge=1, description="trials")
    model: Literal[tuple(sorted(MODEL_NAMES))] = "small_cnn"
    epochs: int = Field(6, ge=1, description="epochs per trial (ASHA's max_t)")
    gpu: bool = Field(False, description="one GPU per trial")
    cpus_per_worker: float = Field(1.0, gt=0, **FINITE)
    lr_min: float = 0.005
    lr_max: float = 0.2
    wd_min: float = 1e-5
    wd_max: float = 1e-3
    batch_sizes: tuple[int, ...] = Field((), description="also tune the batch size over these, e.g. 64 128 256")
    label_smoothing: Optional[tuple[float, float]] = Field(
        None, description="also tune label smoothing uniformly in this range MIN MAX, e.g. 0 0.2")
    grace_period: int = Field(1, ge=1, description="ASHA: epochs every trial gets before it can be stopped")
    reduction_factor: int = Field(2, ge=2)
    recipe: dict = Field(default_factory=dict, description="other Recipe fields, fixed for every trial")

    @model_validator(mode="after")
    def _ranges(self):
        _increasing(("lr-min", self.lr_min, "lr-max", self.lr_max), ("wd-min", self.wd_min, "wd-max", self.wd_max))
        if any(b < 1 for b in self.batch_sizes):
            raise FerRayError(f"--batch-sizes must all be at least 1, got {list(self.batch_sizes)}")
        if self.label_smoothing is not None and not 0 <= self.label_smoothing[0] < self.label_smoothing[1] < 1:
            raise FerRayError("--label-smoothing takes a range MIN MAX with 0 <= MIN < MAX < 1, "
                              f"got {' '.join(map(str, self.label_smoothing))}")
        return self
