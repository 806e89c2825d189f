"""`ray job submit --working-dir . -- python jobs/sweep.py ARGS` runs `fer-ray sweep ARGS` on the cluster."""
import sys
from fer_ray.cli import main
sys.exit(main(["sweep", *sys.argv[1:]]))
