"""Figures 7 and 8 of ``make bench`` (issue 23): the project beside its peers, in the same run.

7. a no-op ``mnist-assets refresh`` on a built data dir beside a no-op ``dvc repro`` of a 5-stage DVC
   pipeline over the same four files (``dvc_pipeline.py``): CPU seconds (user + sys of the child, from
   ``getrusage(RUSAGE_CHILDREN)``) and wall seconds, with ``python -c "import dagster"`` measured in the
   same rounds, so the report can say what the no-op costs beyond importing Dagster; one more no-op under
   cProfile says where its seconds go;
8. a cold ingest (``ingest_refresh.py``: the CLI's refresh with the training steps left out, download ->
   shards, whole process) beside TensorFlow Datasets' Fashion-MNIST ``download_and_prepare``
   (``tfds_peer.py``) from the same loopback mirror, whole processes, alternated.
"""

from __future__ import annotations

import json
import pstats
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from statistics import median

import dvc_pipeline

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S', time.gmtime())}] {message}", file=sys.stderr, flush=True)


def timed(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float, str]:
    """(CPU seconds, wall seconds, stdout) of one child process run to its end. The CPU is user + sys of
    the child and everything it waited for (RUSAGE_CHILDREN grows when a child is reaped)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cpu, wall, done.stdout


def require_dvc(dvc: str) -> None:
    if shutil.which(dvc) is None:
        raise SystemExit(
            f"figure 7 needs DVC at {dvc}, which is not there: `make bench` installs it into .venv-dvc "
            "from requirements-dvc.lock (or pass --dvc PATH)."
        )


def figure_7(built, served: Path, tmp: Path, dvc: str, dataset: str, repeats: int) -> dict:
    """No-op refresh of ``built`` (a Scratch holding a whole built graph) vs no-op ``dvc repro``."""
    require_dvc(dvc)
    dvc = str(Path(dvc).resolve())  # it runs in the DVC project's directory
    project = tmp / "dvc-peer"
    dvc_pipeline.write(project, served, sys.executable, dvc)
    cold_cpu, cold_wall, _ = timed([dvc, "repro", "--quiet"], dvc_pipeline.env(), project)

    bin_dir = Path(sys.executable).parent
    sides = {
        "refresh": ([str(bin_dir / "mnist-assets"), "refresh", dataset], built.env, ROOT),
        "dvc_repro": ([dvc, "repro"], dvc_pipeline.env(), project),
        "import_dagster": ([sys.executable, "-c", "import dagster"], built.env, ROOT),
    }
    seen: dict[str, dict[str, list[float]]] = {k: {"cpu": [], "wall": []} for k in sides}
    names = list(sides)
    for rep in range(repeats):  # every side once per round, the order rotated: drift hits all alike
        for name in names[rep % len(names) :] + names[: rep % len(names)]:
            argv, env, cwd = sides[name]
            cpu, wall, out = timed(argv, env, cwd)
            if name == "refresh" and json.loads(out)["ran"]:
                raise SystemExit(f"the no-op refresh ran something: {json.loads(out)['ran']}")
            if name == "dvc_repro" and "Running stage" in out:
                raise SystemExit(f"the no-op dvc repro ran a stage:\n{out}")
            seen[name]["cpu"].append(round(cpu, 3))
            seen[name]["wall"].append(round(wall, 3))
        log(f"figure 7 round {rep}: " + ", ".join(f"{k} {v['cpu'][-1]:.2f} CPU-s" for k, v in seen.items()))
    med = {k: {m: median(v[m]) for m in ("cpu", "wall")} for k, v in seen.items()}
    profile = noop_profile(built, dataset, tmp / "noop.prof")
    return {
        "method": "no-op `mnist-assets refresh` of a data dir built by a cold refresh (as figure 1's), "
        "no-op `dvc repro` of a 5-stage DVC pipeline over the same four files "
        '(benchmarks/dvc_pipeline.py) and `python -c "import dagster"`, each a whole process, '
        "rotated every round; CPU is user + sys",
        "dvc_cold_repro": {"cpu_seconds": round(cold_cpu, 2), "wall_seconds": round(cold_wall, 2)},
        "runs": seen,
        "median": {k: {m: round(x, 3) for m, x in v.items()} for k, v in med.items()},
        "cpu_ratio": round(med["refresh"]["cpu"] / med["dvc_repro"]["cpu"], 3),
        "wall_ratio": round(med["refresh"]["wall"] / med["dvc_repro"]["wall"], 3),
        "import_dagster_cpu_ratio": round(med["import_dagster"]["cpu"] / med["dvc_repro"]["cpu"], 3),
        "beyond_import_dagster_cpu_ratio": round(
            (med["refresh"]["cpu"] - med["import_dagster"]["cpu"]) / med["dvc_repro"]["cpu"], 3
        ),
        "profile": profile,
    }


def noop_profile(built, dataset: str, path: Path) -> dict:
    """One more no-op refresh under cProfile (the CLI's own ``main``): where its seconds go."""
    argv = [sys.executable, "-m", "cProfile", "-o", str(path), "-m", "mnist_assets.cli", "refresh", dataset]
    timed(argv, built.env, ROOT)
    raw = pstats.Stats(str(path)).stats  # type: ignore[attr-defined]

    def cumulative(match) -> tuple[int, float]:
        hits = [(v[1], v[3]) for (f, _l, n), v in raw.items() if match(f, n)]
        return sum(c for c, _ in hits), round(sum(s for _, s in hits), 2)

    def ours(name: str, file: str) -> float:
        return cumulative(lambda f, n: n == name and f.endswith(file))[1]

    runs, run_seconds = cumulative(lambda f, n: n == "execute_in_process" and "/dagster/" in f)
    initdb, initdb_seconds = cumulative(lambda f, n: n == "_initdb" and "event_log" in f)
    cli = ours("main", "mnist_assets/cli.py")
    return {
        "profiled_seconds": round(sum(v[2] for v in raw.values()), 2),
        # imports before main() (mnist_assets and Dagster) plus those main() makes (the instance's storage)
        "imports_seconds": cumulative(lambda f, n: n == "_find_and_load" and "importlib" in f)[1],
        "cli_main_seconds": cli,
        "observe_seconds": ours("observe", "rebuild/refresh.py"),
        "observation_runs": runs,
        "observation_runs_seconds": run_seconds,
        "observation_bodies_seconds": round(
            ours("urls", "assets/raw.py") + ours("model_configs", "assets/checkpoints.py"), 2
        ),
        "event_log_databases_initialized": initdb,
        "initdb_seconds": initdb_seconds,
        "judge_seconds": ours("causes", "rebuild/staleness.py"),
        "definitions_check_seconds": ours("_definitions_refused", "mnist_assets/cli.py"),
    }


def require_tfds(python: str) -> None:
    done = subprocess.run([python, "-c", "import tensorflow_datasets"], capture_output=True, check=False)
    if done.returncode != 0:
        raise SystemExit(
            f"figure 8 needs tensorflow-datasets in {python}, which cannot import it: `make bench` installs "
            "it from requirements-bench.lock (the bench extra)."
        )


def figure_8(tmp: Path, mirror, served: Path, scratch_for, dataset: str, repeats: int) -> dict:
    """Cold ingest refresh vs TFDS download_and_prepare, alternated; ``scratch_for(name)`` gives a fresh
    Scratch (DAGSTER_HOME, storage, catalog) pointing at the mirror."""
    require_tfds(sys.executable)
    runs = []
    for rep in range(repeats):
        row: dict = {}
        for side in ("tfds", "ours") if rep % 2 == 0 else ("ours", "tfds"):
            if side == "tfds":
                out = tmp / f"tfds-{rep}"
                gets = sum(mirror.gets.values())
                argv = [sys.executable, str(HERE / "tfds_peer.py"), "--mirror", mirror.url]
                _cpu, wall, stdout = timed(argv + ["--served", str(served), "--out", str(out)], None, ROOT)
                if sum(mirror.gets.values()) - gets != 4 or json.loads(stdout)["splits"]["train"] != 60000:
                    raise SystemExit(f"TFDS did not download the four files and prepare train: {stdout}")
                shutil.rmtree(out, ignore_errors=True)
                row["tfds_seconds"], row["tfds"] = round(wall, 2), json.loads(stdout)["seconds"]
            else:
                scratch = scratch_for(f"peer-ingest-{rep}")
                argv = [sys.executable, str(HERE / "ingest_refresh.py"), dataset]
                _cpu, wall, stdout = timed(argv, scratch.env, ROOT)
                summary = json.loads(stdout)
                scratch.remove()
                if summary["failed"] or len(summary["ran"]) != 11:  # 4 raw_gzip + 4 idx + 3 shards
                    raise SystemExit(f"the cold ingest did not run download -> shards: {summary['ran']}")
                row["ingest_seconds"] = round(wall, 2)
                row["ingest_steps_seconds"] = round(sum(s["seconds"] or 0 for s in summary["ran"]), 2)
        row["ratio"] = round(row["ingest_seconds"] / row["tfds_seconds"], 3)
        log(f"figure 8 pair {rep}: ingest {row['ingest_seconds']} s, TFDS {row['tfds_seconds']} s")
        runs.append(row)
    return {
        "method": "whole-process wall time of benchmarks/ingest_refresh.py (a cold `mnist-assets refresh` "
        "with the training steps left out: download -> shards) over that of benchmarks/tfds_peer.py "
        "(TFDS's fashion_mnist download_and_prepare from the same mirror, the served files' checksums "
        "registered), alternated",
        "runs": runs,
        "ingest_seconds": round(median([r["ingest_seconds"] for r in runs]), 2),
        "tfds_seconds": round(median([r["tfds_seconds"] for r in runs]), 2),
        "ratio": round(median([r["ratio"] for r in runs]), 3),
        "tfds_in_process_seconds": {
            k: round(median([r["tfds"][k] for r in runs]), 2) for k in runs[0]["tfds"]
        },
    }
