#!/usr/bin/env bash
# The commands that made the committed expert datasets (run from the repository root with the .venv on PATH):
#   data/experts/run.sh all                      # all three, one after another (hours of CPU)
#   data/experts/run.sh expert ENV NAME STEPS NET
#   data/experts/run.sh stochastic_all           # expert-v1: the same experts' sampled actions (issue 26 item 2)
#   data/experts/run.sh dmc_all                  # the paper's DMC tasks (issue 26 item 7), recorded with sampled actions
set -euo pipefail
expert() {  # env dataset-name steps net [--deterministic]: train an expert and record it
  smiling-cli demos --env "$1" --dataset-id "smiling/$2/expert-v0" --algorithm sac --expert-steps "$3" \
    --expert-net "$4" ${5:-} --eval-every 10000 --episodes 25 --random-episodes 100 --seed 0 --force \
    --minari-root data/minari --workdir "data/experts/$2"
}
stochastic() {  # env dataset-name: record the committed expert with its sampled actions, as the official code does
  smiling-cli demos --env "$1" --dataset-id "smiling/$2/expert-v1" --algorithm sac --stochastic \
    --policy "data/experts/$2/demos/expert_policy.zip" --episodes 25 --random-episodes 100 --seed 0 --force \
    --minari-root data/minari --workdir "data/experts/$2/stochastic"
}
stochastic_all() {
  stochastic Hopper-v5 hopper
  stochastic HalfCheetah-v5 halfcheetah
  stochastic Walker2d-v5 walker2d
}
dmc_all() {  # the expert() command: demos records sampled actions by default, as the official code does
  expert dm_control/ball_in_cup-catch-v0 ball-in-cup-catch 150000 256,256   # 40k: 845 acting deterministically, 518 +- 409 sampling
  expert dm_control/cheetah-run-v0 cheetah-run 250000 256,256
}
all() {  # the Gym expert-v0 datasets were recorded with the mean action (demos' default before issue 26)
  expert Hopper-v5 hopper 300000 128,128 --deterministic
  expert HalfCheetah-v5 halfcheetah 400000 256,256 --deterministic
  expert Walker2d-v5 walker2d 300000 256,256 --deterministic
}
"$@"
