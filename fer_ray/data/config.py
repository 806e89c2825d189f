"""The settings of ``fer-ray prepare``: its flags come from these fields (see
``fer_ray.training.config``), and so do the pipeline's defaults for the catalog it prepares."""

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, model_validator

from fer_ray.data.sources import KDEF_ANGLES, SOURCES
from fer_ray.data.splits import SPLIT_MODES
from fer_ray.errors import FerRayError

FILE_SOURCES = ("folders", "kdef")  # the sources that read image files


class PrepareConfig(BaseModel):
    """One catalog to build from a source."""

    model_config = ConfigDict(extra="forbid")

    # A str, not a Literal: an unknown source is make_source's one error line, like every other
    # input problem.
    source: str = Field(description=f"one of: {', '.join(SOURCES)}")
    input: Optional[str] = Field(None, description="CSV file or folder (not needed for synthetic)")
    output: str = Field(description="catalog directory to write")
    size: int = Field(48, ge=1, description="image side in pixels")
    split: Optional[Literal[SPLIT_MODES]] = Field(
        None, description="source: the source's own split (default; KDEF: subject); random: the paper's "
                          "stratified 80/10/10; subject: identity-disjoint 80/10/10")
    seed: int = Field(0, ge=0, description="seed of the random split and of synthetic faces (numpy takes no "
                                            "negative seed)")
    # Synthetic faces stand in for FER2013's 35,887; each read task draws all ``count`` labels
    # and the driver keeps a row per face, so --count 1e11 asked for ~800 GB before one face.
    count: int = Field(3500, ge=1, le=1_000_000, description="synthetic: number of faces")
    angles: Optional[str] = Field(None, description="KDEF: comma-separated angles to keep (FL,HL,S,HR,FR)")
    face_crop: bool = Field(False, description="KDEF: crop the largest detected face")
    max_pixels: Optional[int] = Field(None, ge=1, description="reject images above this many pixels")
    overwrite: bool = Field(False, description="replace an existing output directory")
    num_cpus: Optional[int] = Field(None, ge=1, description="local Ray only: CPUs to use")

    @model_validator(mode="after")
    def _used(self):
        """A setting the source would ignore is refused, not silently dropped."""
        if self.source != "kdef" and (self.angles or self.face_crop):
            raise FerRayError(f"--angles and --face-crop apply to --source kdef, not --source {self.source}")
        if self.max_pixels is not None and self.source not in FILE_SOURCES:
            raise FerRayError(f"--max-pixels applies to image files (--source folders or kdef), "
                              f"not --source {self.source}")
        return self

    def source_options(self) -> dict:
        """``make_source``'s options for this source."""
        options = {}
        if self.source == "synthetic":
            options = {"count": self.count, "seed": self.seed}
        elif self.source == "kdef":
            angles = tuple(a.strip().upper() for a in self.angles.split(",")) if self.angles else KDEF_ANGLES
            options = {"angles": angles, "face_crop": self.face_crop}
        if self.max_pixels is not None:
            options["max_pixels"] = self.max_pixels
        return options
