"""Shared fixtures: one local Ray per test session, paths to the real data, tiny catalogs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("FER_RAY_SHARED_DATA", ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray with 2 CPUs, started once for the whole test run (a cold start is ~5 s)."""
    import ray

    from fer_ray.runtime import init_ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    init_ray(num_cpus=2)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def fer_folders() -> Path:
    path = SHARED_DATA / "fer2013"
    if not (path / "train").is_dir():
        pytest.skip(f"real FER2013 folders not found at {path} (see shared/data/README.md)")
    return path


@pytest.fixture(scope="session")
def fer_csv_sample() -> Path:
    path = SHARED_DATA / "fer2013-sample.csv"
    if not path.is_file():
        pytest.skip(f"FER2013 CSV sample not found at {path} (see shared/data/README.md)")
    return path


@pytest.fixture(scope="session")
def synthetic_catalog(tmp_path_factory, ray_session) -> Path:
    """A small synthetic catalog (1400 faces, 48 px) shared by the tests that need one."""
    from fer_ray.data.ingest import build_catalog
    from fer_ray.data.sources import make_source

    out = tmp_path_factory.mktemp("catalogs") / "synthetic"
    build_catalog(make_source("synthetic", None, count=1400, seed=0), str(out))
    return out


@pytest.fixture(scope="session")
def small_artifact(tmp_path_factory, synthetic_catalog) -> Path:
    """A small_cnn trained on the synthetic catalog without Ray (~20 s; ~95% val accuracy)."""
    from fer_ray.artifacts import save_cnn
    from fer_ray.training.local import fit_local
    from fer_ray.training.config import Recipe

    model, _, meta = fit_local(str(synthetic_catalog), "small_cnn", Recipe(epochs=8, batch_size=32, lr=0.05),
                               device="cpu")
    return save_cnn(str(tmp_path_factory.mktemp("artifacts") / "small_cnn"), model, meta)


def pytest_collection_modifyitems(items):
    """A test that uses Ray through any fixture (``ray_session``, or a catalog built on Ray Data)
    is marked ``ray`` by that use, so ``-m "not ray"`` (``make test-fast``) never starts Ray."""
    for item in items:
        if "ray_session" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.ray)
