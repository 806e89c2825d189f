"""The settings of ``fer-ray ensemble``: its flags, ``run.json`` and resume come from these
fields (see ``fer_ray.training.config``). Nothing here imports torch or Ray."""

from typing import Annotated, Optional

from pydantic import BaseModel, ConfigDict, Field

from fer_ray.training.config import TrainConfig

# Inverse penalties of the per-emotion logistic regressions, tried on val.
C_GRID = (0.001, 0.01, 0.1, 1.0, 10.0)


class EnsembleConfig(BaseModel):
    """The paper's stacked ensemble of two or more CNN artifacts."""

    model_config = ConfigDict(extra="forbid", validate_by_name=True)

    members: tuple[str, ...] = Field(min_length=2, description="two or more CNN artifact directories")
    catalog: str
    run_dir: str = Field(description="features, artifact, report.md and reports go here")
    overwrite: bool = Field(False, description=TrainConfig.model_fields["overwrite"].description)
    grid: tuple[Annotated[float, Field(gt=0, allow_inf_nan=False)], ...] = Field(
        C_GRID, min_length=1, description="inverse penalties tried on val", alias="c_grid")
    batch_size: int = Field(256, ge=1, description="faces per featurizer batch")
    actors: Optional[int] = Field(None, ge=1, description="featurizer actors (default: GPUs, or CPUs - 1)")
    gpu: Optional[bool] = Field(None, description="one GPU per featurizer actor (default: when the cluster has GPUs)")
