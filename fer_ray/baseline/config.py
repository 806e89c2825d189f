"""The settings of ``fer-ray baseline``, and the SVM fit settings a lambda sweep shares with it:
flags, ``run.json`` and resume come from these fields (see ``fer_ray.training.config``)."""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from fer_ray.choices import SVM_DEFAULT_LAMBDA, SVM_LOSSES, SVM_SOLVERS
from fer_ray.training.config import TrainConfig


class SvmFit(BaseModel):
    """How one linear SVM is fitted."""

    model_config = ConfigDict(extra="forbid", validate_by_name=True)

    solver: Literal[SVM_SOLVERS] = Field(
        "liblinear", description="liblinear: exact LinearSVC; sgd: SGDClassifier, faster, less accurate")
    loss: Literal[SVM_LOSSES] = Field(
        "hinge", description="hinge: the paper's; squared_hinge: LinearSVC's default, primal solver")
    max_iter: int = Field(1000, ge=1)


class BaselineConfig(SvmFit):
    """One ``fer-ray baseline`` run."""

    catalog: str
    run_dir: str = Field(description="artifact, val/test reports and result.json go here")
    overwrite: bool = Field(False, description=TrainConfig.model_fields["overwrite"].description)
    lam: float = Field(SVM_DEFAULT_LAMBDA, gt=0, allow_inf_nan=False,
                       description="L2 weight in (1/N) sum hinge + lambda ||W||^2", alias="lambda")
