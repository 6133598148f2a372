#!/usr/bin/env bash
# Materialize every asset and partition of one dataset with the plain Dagster CLI.
# Usage: scripts/materialize.sh DATASET [EPOCHS]
# `dagster asset materialize --select '*'` refuses partitioned assets without --partition, so the
# graph is built upstream first, one run per partition (each partition gets its own data version).
# These are the steps of mnist_assets.assets.materialization_steps().
set -euo pipefail
dataset=${1:?usage: scripts/materialize.sh DATASET [EPOCHS]}
epochs=${2:-}
dagster=${DAGSTER:-dagster}

for file in train-images train-labels test-images test-labels; do
  "$dagster" asset materialize -m mnist_assets --select "$dataset/urls,$dataset/raw_gzip,$dataset/idx" --partition "$file"
done
for split in train test holdout; do
  "$dagster" asset materialize -m mnist_assets --select "$dataset/shards" --partition "$split"
done
config='{}'
if [ -n "$epochs" ]; then
  config="{\"ops\": {\"${dataset}__checkpoint\": {\"config\": {\"epochs\": $epochs}}}}"
fi
"$dagster" asset materialize -m mnist_assets --select "$dataset/checkpoint" --config-json "$config"
