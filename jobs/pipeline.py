"""`ray job submit --working-dir . -- python jobs/pipeline.py ARGS` runs `fer-ray pipeline ARGS` on the cluster."""
import sys
from fer_ray.cli import main
sys.exit(main(["pipeline", *sys.argv[1:]]))
