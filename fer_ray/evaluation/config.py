"""The settings of ``fer-ray evaluate`` (its flags are generated from these fields)."""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from fer_ray.choices import TTA_MODES


class EvaluateConfig(BaseModel):
    """One evaluation of an artifact on a catalog split (``evaluate_artifact``)."""

    model_config = ConfigDict(extra="forbid")

    catalog: str
    split: str = Field("test", description="the catalog's split (train, val or test)")
    output: str = Field(description="directory for metrics.json, report.md and plots")
    overwrite: bool = Field(False, description="write over an earlier report in --output")
    tta: Literal[TTA_MODES] = Field("none", description="test-time augmentation")
    device: str = Field("auto", description="auto, cpu or cuda")
