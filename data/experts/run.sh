#!/usr/bin/env bash
# The commands that made the committed expert datasets (run from the repository root with the .venv on PATH):
#   data/experts/run.sh all                      # all three, one after another (hours of CPU)
#   data/experts/run.sh expert ENV NAME STEPS NET
set -euo pipefail
expert() {  # env dataset-name steps net
  smiling-cli demos --env "$1" --dataset-id "smiling/$2/expert-v0" --algorithm sac --expert-steps "$3" \
    --expert-net "$4" --eval-every 10000 --episodes 25 --random-episodes 100 --seed 0 --force \
    --minari-root data/minari --workdir "data/experts/$2"
}
all() {
  expert Hopper-v5 hopper 300000 128,128
  expert HalfCheetah-v5 halfcheetah 400000 256,256
  expert Walker2d-v5 walker2d 300000 256,256
}
"$@"
