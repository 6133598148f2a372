"""What the instance knows about a dataset: per asset and partition, the latest materialization.

``python -m mnist_assets.status DATASET [--json]`` prints one line per asset partition (data version,
step seconds, artifact path) and exits 1 if any is missing, so CI and scripts can rely on it. A
partition whose artifact is gone from storage is missing, whatever the event log says.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import dagster as dg

from mnist_assets import tags
from mnist_assets.catalog_errors import catalog_errors
from mnist_assets.keys import partition_keys
from mnist_assets.rebuild.staleness import stores_of


def dataset_status(instance: dg.DagsterInstance, defs: dg.Definitions, dataset_id: str) -> list[dict]:
    graph = defs.resolve_asset_graph()
    keys = [  # upstream first, in the graph's own order
        k for k in graph.toposorted_asset_keys if k.path[0] == dataset_id and graph.get(k).is_materializable
    ]
    if not keys:
        raise SystemExit(f"unknown dataset {dataset_id!r}")
    rows: list[dict] = []
    step_seconds: dict[str, dict[str, float | None]] = {}  # run id → step key → how long it took
    stores = stores_of(defs.assets or (), defs.resources or {})
    for key in keys:
        for partition in partition_keys(graph.get(key).partitions_def):
            records = instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition] if partition else None),
                limit=1,
            ).records
            in_storage = stores[key].exists(key, partition)
            row: dict[str, Any] = {
                "asset": key.to_user_string(),
                "partition": partition,
                "materialized": bool(records) and in_storage,
                "in_storage": in_storage,
            }
            if records:
                event = records[0].event_log_entry
                materialization = records[0].asset_materialization
                assert materialization is not None, "fetch_materializations returns materialization events"
                if event.run_id not in step_seconds:
                    step_seconds[event.run_id] = {
                        s.step_key: round(s.end_time - s.start_time, 2)
                        if s.start_time is not None and s.end_time is not None
                        else None
                        for s in instance.get_run_step_stats(event.run_id)
                    }
                recorded = materialization.tags or {}
                path = materialization.metadata.get("path")
                row_count = materialization.metadata.get(tags.ROW_COUNT)
                row.update(
                    data_version=recorded.get(tags.DATA_VERSION, ""),
                    code_version=recorded.get(tags.CODE_VERSION, ""),
                    # an event reported outside a run (report_runless_asset_event) has no step
                    seconds=step_seconds[event.run_id].get(event.step_key) if event.step_key else None,
                    path=path.value if path else None,
                    rows=row_count.value if row_count else None,
                )
            rows.append(row)
    return rows


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("dataset")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    from mnist_assets import defs

    if error := catalog_errors(defs).get(args.dataset):
        print(f"{parser.prog}: {error}", file=sys.stderr)
        return 2
    with dg.DagsterInstance.get() as instance:
        rows = dataset_status(instance, defs, args.dataset)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(f"{'asset':28} {'partition':13} {'data version':17} {'step s':>7}  path")
        for r in rows:
            if r["materialized"]:
                seconds = "" if r["seconds"] is None else f"{r['seconds']:.2f}"
                print(
                    f"{r['asset']:28} {r['partition'] or '-':13} {r['data_version'][:16]:17} {seconds:>7}  "
                    f"{r['path']}"
                )
            else:
                why = "MISSING FROM STORAGE" if r.get("data_version") else "MISSING"
                print(f"{r['asset']:28} {r['partition'] or '-':13} {why}")
    return 0 if all(r["materialized"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
