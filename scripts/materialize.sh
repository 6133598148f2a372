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

# Quiet by default (mnist_assets/quiet.py hides the rest once Dagster loads mnist_assets): the Dagster CLI
# warns that `dagster asset materialize` is superseded (by `dg launch`, from dagster-dg-cli, which this
# project does not install) before it loads anything of ours. This is the plain Dagster CLI the README
# documents on purpose, so exactly that warning (FutureWarning is SupersessionWarning's base; naming
# dagster's class here would import dagster while Python starts) is ignored, unless MNIST_ASSETS_VERBOSE.
# Each run's console shows the steps' own messages (downloads, epochs) at INFO, not Dagster's DEBUG events
# (~15 a step: STEP_START, HANDLED_OUTPUT, ...), which the event log keeps all the same; verbose, Dagster's
# default (DEBUG) stays.
verbose=${MNIST_ASSETS_VERBOSE:-}
console=()  # the run config's member that sets the console's level
case "${verbose,,}" in
  "" | 0 | false | no | off)
    superseded='ignore:Function `asset_materialize_command` is superseded:FutureWarning'
    export PYTHONWARNINGS="${PYTHONWARNINGS:+$PYTHONWARNINGS,}$superseded"
    console=('"loggers": {"console": {"config": {"log_level": "INFO"}}}')
    ;;
esac

# config=(--config-json '{...}') for one run: the members given (e.g. its ops' config) and the console's
run_config() {
  local members=("$@" "${console[@]}")
  config=()
  if [ ${#members[@]} -gt 0 ]; then
    local IFS=,
    config=(--config-json "{${members[*]}}")
  fi
}

# the checkpoint's partitions (the catalog's model configurations), asked of the definitions first: a
# mistake in the dataset's catalog entry or in a setting is its one line (exit 2), before any run
python="$(dirname "$(command -v "$dagster")")/python"  # the interpreter Dagster's CLI runs in
models=$("$python" -c 'import sys
import dagster as dg
from mnist_assets.settings import SettingError
try:
    from mnist_assets.definitions import defs
except SettingError as error:
    sys.exit(print(f"scripts/materialize.sh: {error}", file=sys.stderr) or 2)
from mnist_assets.catalog_errors import catalog_errors
if error := catalog_errors(defs).get(sys.argv[1]):
    sys.exit(print(f"scripts/materialize.sh: {error}", file=sys.stderr) or 2)
checkpoint = defs.resolve_asset_graph().get(dg.AssetKey([sys.argv[1], "checkpoint"]))
print(" ".join(checkpoint.partitions_def.get_partition_keys()))' "$dataset")

run_config
for file in train-labels train-images test-labels test-images; do  # labels first: see mnist_assets.assets.common.FILES
  "$dagster" asset materialize -m mnist_assets --select "$dataset/urls,$dataset/raw_gzip,$dataset/idx" --partition "$file" "${config[@]}"
done
for split in train test holdout; do
  "$dagster" asset materialize -m mnist_assets --select "$dataset/shards" --partition "$split" "${config[@]}"
done
run_config ${epochs:+"\"ops\": {\"${dataset}__checkpoint\": {\"config\": {\"epochs\": $epochs}}}"}
for model in $models; do
  "$dagster" asset materialize -m mnist_assets --select "$dataset/model_configs,$dataset/checkpoint" --partition "$model" "${config[@]}"
done
run_config
"$dagster" asset materialize -m mnist_assets --select "$dataset/best_model" "${config[@]}"
