"""`ray job submit --working-dir . -- python jobs/score.py ARGS` runs `fer-ray score ARGS` on the cluster."""
import sys
from fer_ray.cli import main
sys.exit(main(["score", *sys.argv[1:]]))
