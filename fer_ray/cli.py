"""``fer-ray <stage>``: each stage is a thin call into the package's modules.

Errors the user can fix (missing input, bad layout, unknown names) print one line and exit
with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys

from fer_ray.data.catalog import CatalogError
from fer_ray.data.sources import SOURCES, SourceError
from fer_ray.data.splits import SPLIT_MODES

USER_ERRORS = (SourceError, CatalogError, FileNotFoundError, ValueError)


def _prepare(args) -> None:
    from fer_ray.data.catalog import audit, build_catalog
    from fer_ray.data.sources import KDEF_ANGLES, make_source

    options = {}
    if args.source == "synthetic":
        options = {"count": args.count, "seed": args.seed}
    elif args.source == "kdef":
        angles = tuple(a.strip().upper() for a in args.angles.split(",")) if args.angles else KDEF_ANGLES
        options = {"angles": angles, "face_crop": args.face_crop}
    if args.max_pixels and args.source in ("folders", "kdef"):
        options["max_pixels"] = args.max_pixels
    source = make_source(args.source, args.input, size=args.size, **options)
    manifest = build_catalog(source, args.output, split_mode=args.split, seed=args.seed,
                             overwrite=args.overwrite, num_cpus=args.num_cpus)
    print(audit(manifest))
    print(f"catalog written to {args.output} in {manifest['prepare_seconds']} s")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fer-ray", description=__doc__.splitlines()[0])
    stages = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")

    p = stages.add_parser("prepare", help="read a source into a catalog (Parquet + manifest)")
    p.add_argument("--source", required=True, choices=SOURCES)
    p.add_argument("--input", help="CSV file or folder (not needed for synthetic)")
    p.add_argument("--output", required=True, help="catalog directory to write")
    p.add_argument("--size", type=int, default=48, help="image side in pixels (default 48)")
    p.add_argument("--split", choices=SPLIT_MODES, default=None,
                   help="source: the source's own split (default; KDEF: subject); random: the "
                        "paper's stratified 80/10/10; subject: identity-disjoint 80/10/10")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--count", type=int, default=3500, help="synthetic: number of faces")
    p.add_argument("--angles", help="KDEF: comma-separated angles to keep (FL,HL,S,HR,FR)")
    p.add_argument("--face-crop", action="store_true", help="KDEF: crop the largest detected face")
    p.add_argument("--max-pixels", type=int, default=None, help="reject images above this many pixels")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    p.add_argument("--num-cpus", type=int, default=None, help="local Ray only: CPUs to use")
    p.set_defaults(func=_prepare)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except USER_ERRORS as exc:
        print(f"fer-ray {args.stage}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
