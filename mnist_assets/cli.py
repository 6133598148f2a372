"""``mnist-assets``: the project's command line (refresh, status) on the instance in DAGSTER_HOME."""

from __future__ import annotations

import argparse
import json
import os
import sys

from mnist_assets import quiet


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mnist-assets", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--verbose",
        action="store_true",
        help=f"show Dagster's beta warnings and TensorFlow's start-up logs (same as {quiet.VERBOSE_ENV}=1)",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    refresh = commands.add_parser(
        "refresh", help="materialize exactly the stale or missing asset partitions, upstream first"
    )
    refresh.add_argument("datasets", nargs="*", help="dataset ids (default: every dataset)")
    refresh.add_argument("--dry-run", action="store_true", help="print the plan with causes, run nothing")
    refresh.add_argument(
        "--verify",
        action="store_true",
        help="also read every stored artifact and check it against its record; rebuild what is damaged",
    )
    status = commands.add_parser("status", help="what is materialized, with data versions and paths")
    status.add_argument("dataset")
    status.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.verbose and not quiet.verbose():
        os.environ[quiet.VERBOSE_ENV] = "1"
        if argv is None:  # the definitions loaded quietly along with this module: start again, verbose
            os.execv(sys.executable, [sys.executable, "-m", "mnist_assets.cli", *sys.argv[1:]])
        quiet.uninstall()

    if args.command == "status":
        from mnist_assets.status import main as status_main

        return status_main([args.dataset, *(["--json"] if args.json else [])])

    import dagster as dg

    from mnist_assets import defs
    from mnist_assets.refresh import refresh as run_refresh

    with dg.DagsterInstance.get() as instance:
        try:
            summary = run_refresh(
                defs,
                instance,
                args.datasets,
                dry_run=args.dry_run,
                verify=args.verify,
                log=lambda m: print(m, file=sys.stderr),
                # the steps' own messages (downloads, epochs, warnings), not Dagster's debug events
                console_log_level="DEBUG" if quiet.verbose() else "INFO",
            )
        except ValueError as error:
            print(f"mnist-assets refresh: {error}", file=sys.stderr)
            return 2
    print(json.dumps(summary.to_dict(), indent=2))
    return 1 if summary.failed or summary.blocked else 0


if __name__ == "__main__":
    sys.exit(main())
