#!/usr/bin/env bash
# The commands that made the committed expert datasets (run from the repository root).
set -euo pipefail
expert() {  # env dataset-name steps net
  smiling-cli demos --env "$1" --dataset-id "smiling/$2/expert-v0" --algorithm sac --expert-steps "$3" \
    --expert-net "$4" --eval-every 10000 --episodes 25 --random-episodes 100 --seed 0 --force \
    --minari-root data/minari --workdir "data/experts/$2"
}
"$@"
