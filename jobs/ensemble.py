"""`ray job submit --working-dir . -- python jobs/ensemble.py ARGS` runs `fer-ray ensemble ARGS` on the cluster."""
import sys
from fer_ray.cli import main
sys.exit(main(["ensemble", *sys.argv[1:]]))
