import os
import subprocess
import sys

import dagster as dg

from mnist_assets_tests.support import REPO

PYTHON = sys.executable
DAGSTER = os.path.join(os.path.dirname(sys.executable), "dagster")


def test_definitions_are_loadable_with_both_dataset_groups_and_their_partitions():
    from mnist_assets import defs

    dg.Definitions.validate_loadable(defs)
    graph = defs.resolve_asset_graph()
    for dataset in ("mnist", "fashion_mnist"):
        for name in ("raw_gzip", "idx", "shards", "checkpoint", "best_model"):
            node = graph.get(dg.AssetKey([dataset, name]))
            assert node.group_name == dataset and node.code_version
        assert graph.get(dg.AssetKey([dataset, "urls"])).is_observable
        raw = graph.get(dg.AssetKey([dataset, "raw_gzip"])).partitions_def
        assert raw.get_partition_keys() == ["train-labels", "train-images", "test-labels", "test-images"]
        shards = graph.get(dg.AssetKey([dataset, "shards"])).partitions_def
        assert shards.get_partition_keys() == ["train", "test", "holdout"]
        checkpoint = graph.get(dg.AssetKey([dataset, "checkpoint"])).partitions_def
        assert checkpoint.get_partition_keys() == ["cnn", "small_cnn", "bn_cnn"]
        configs = graph.get(dg.AssetKey([dataset, "model_configs"]))
        assert configs.is_observable
        assert configs.partitions_def.get_partition_keys() == ["cnn", "small_cnn", "bn_cnn"]
        assert graph.get(dg.AssetKey([dataset, "best_model"])).partitions_def is None


def test_loading_the_definitions_does_not_import_tensorflow():
    code = "import sys; from mnist_assets import defs; "
    code += "print('tensorflow' in sys.modules, 'keras' in sys.modules)"
    out = subprocess.run([PYTHON, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False"


def test_dagster_cli_validates_the_code_location(tmp_path):
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path)}
    (tmp_path / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    out = subprocess.run(
        [DAGSTER, "definitions", "validate", "-w", "workspace.yaml"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Validation successful" in out.stdout + out.stderr


def test_catalog_and_storage_come_from_the_environment(mini_catalog, tmp_path):
    code = (
        "from mnist_assets import defs; "
        "print(sorted({k.path[0] for k in defs.resolve_asset_graph().get_all_asset_keys()})); "
        "print(defs.resources['npy_io_manager'].root)"
    )
    env = {
        **os.environ,
        "MNIST_ASSETS_CATALOG": str(mini_catalog["path"]),
        "MNIST_ASSETS_STORAGE": str(tmp_path),
    }
    out = subprocess.run([PYTHON, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split("\n")[:2] == ["['mini_mnist']", str(tmp_path)]
