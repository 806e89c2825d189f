"""`ray job submit --working-dir . -- python jobs/train.py ARGS` runs `fer-ray train ARGS` on the cluster."""
import sys
from fer_ray.cli import main
sys.exit(main(["train", *sys.argv[1:]]))
