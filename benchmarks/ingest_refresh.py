"""``mnist-assets refresh DATASET`` without the checkpoint: what the CLI does, with the checkpoint left out
of the assets it visits (download -> shards only), optionally under cProfile.

    python benchmarks/ingest_refresh.py fashion_mnist [--profile out.prof]

Same environment as the CLI (DAGSTER_HOME, MNIST_ASSETS_STORAGE, MNIST_ASSETS_CATALOG); prints the
refresh summary as JSON. The profile covers the whole process after the interpreter starts: imports,
definitions, observation, every step, the summary.
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import json
import sys
from collections import Counter

SHA256_BYTES: Counter[str] = Counter()
"""Bytes fed to sha256, by the function that asked (only when profiling)."""


class _CountingSha256:
    def __init__(self, inner, caller: str):
        self._inner, self._caller = inner, caller

    def update(self, data) -> None:
        SHA256_BYTES[self._caller] += memoryview(data).nbytes
        self._inner.update(data)

    def __getattr__(self, name):
        return getattr(self._inner, name)


def _count_sha256() -> None:
    """Wrap ``hashlib.sha256`` so every byte hashed is counted against its caller (module.function)."""
    real = hashlib.sha256

    def sha256(data=b"", **kwargs):
        frame = sys._getframe(1)
        caller = f"{frame.f_globals.get('__name__', '?')}.{frame.f_code.co_name}"
        if frame.f_code.co_name == "sha256" and frame.f_back is not None:  # hashing.sha256: who asked it
            up = frame.f_back
            caller += f" <- {up.f_globals.get('__name__', '?')}.{up.f_code.co_name}"
        digest = _CountingSha256(real(**kwargs), caller)
        if memoryview(data).nbytes:
            digest.update(data)
        return digest

    hashlib.sha256 = sha256  # type: ignore[assignment]


def refresh_ingest(dataset: str) -> dict:
    import dagster as dg

    from mnist_assets import defs, settings
    from mnist_assets.rebuild.refresh import Refresher

    with dg.DagsterInstance.get() as instance:
        refresher = Refresher(
            defs, instance, [dataset], console_log_level="DEBUG" if settings.verbose() else "INFO"
        )
        refresher.keys = [k for k in refresher.keys if k.path[-1] not in ("checkpoint", "best_model")]
        summary = refresher.run(log=lambda m: print(m, file=sys.stderr))
    return summary.to_dict()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset")
    parser.add_argument("--profile", help="write cProfile stats here")
    args = parser.parse_args()
    if args.profile:
        _count_sha256()
        profile = cProfile.Profile()
        summary = profile.runcall(refresh_ingest, args.dataset)
        profile.dump_stats(args.profile)
        summary["bench_sha256_bytes_by_caller"] = dict(SHA256_BYTES.most_common())
    else:
        summary = refresh_ingest(args.dataset)
    print(json.dumps(summary, indent=2))
    return 1 if summary["failed"] or summary["blocked"] else 0


if __name__ == "__main__":
    sys.exit(main())
