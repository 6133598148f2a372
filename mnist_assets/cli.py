"""``mnist-assets``: the project's command line (refresh, prepare, status, history, rollback, gc) on the
instance in DAGSTER_HOME."""

from __future__ import annotations

import argparse
import json
import os
import sys

from mnist_assets import quiet, settings


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.verbose and not settings.verbose():
        _become_verbose(argv)
    if (refused := _definitions_refused(args.command)) is not None:
        return refused
    if args.command == "status":
        from mnist_assets.status import main as status_main

        return status_main([args.dataset, *(["--json"] if args.json else [])], prog="mnist-assets status")
    if args.command in ("history", "rollback", "gc"):
        try:
            return _versions_command(args)
        except ValueError as error:
            print(f"mnist-assets {args.command}: {error}", file=sys.stderr)
            return 2
    return _refresh_command(args)


def _parser() -> argparse.ArgumentParser:
    """The command line: ``--verbose`` and one subcommand."""
    parser = argparse.ArgumentParser(prog="mnist-assets", description=description())
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="show Dagster's beta warnings and TensorFlow's start-up logs "
        f"(same as {settings.VERBOSE_ENV}=1)",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    _add_refresh_commands(commands)
    status = commands.add_parser("status", help="what is materialized, with data versions and paths")
    status.add_argument("dataset")
    status.add_argument("--json", action="store_true")
    _add_version_commands(commands)
    return parser


def description() -> str:
    """What ``--help`` says the command is: the module docstring's first paragraph, whole (its first line
    alone stops mid-sentence)."""
    return " ".join(__doc__.split("\n\n")[0].replace("``", "").split())


def _add_refresh_commands(commands) -> None:
    """``refresh`` and ``prepare``: bring assets up to date."""
    refresh = commands.add_parser(
        "refresh", help="materialize exactly the stale or missing asset partitions, upstream first"
    )
    refresh.add_argument("datasets", nargs="*", help="dataset ids (default: every dataset)")
    refresh.add_argument("--dry-run", action="store_true", help="print the plan with causes, run nothing")
    refresh.add_argument(
        "--select",
        metavar="ASSETS",
        help="only these assets, in Dagster's selection syntax with names within the dataset and "
        "partitions in brackets: shards, +shards (and everything upstream), checkpoint[cnn], 'shards or idx'",
    )
    refresh.add_argument(
        "--verify",
        action="store_true",
        help="also read every stored artifact and check it against its record; rebuild what is damaged",
    )
    prepare = commands.add_parser(
        "prepare",
        help="bring a dataset up to date (as refresh does), then print one JSON document with every "
        "artifact's path, data version and row count, for scripts and notebooks",
    )
    prepare.add_argument("dataset")
    prepare.add_argument("--verify", action="store_true", help="as refresh --verify")


def _add_version_commands(commands) -> None:
    """``history``, ``rollback`` and ``gc``: the kept versions of artifacts."""
    history = commands.add_parser("history", help="every kept version of an artifact, newest first")
    rollback = commands.add_parser(
        "rollback",
        help="make a kept version current again (its files verified first), recorded in the event log",
    )
    for command in (history, rollback):
        command.add_argument("dataset")
        command.add_argument("asset", help="e.g. shards or checkpoint")
        command.add_argument("partition", nargs="?", help="e.g. train (partitioned assets only)")
    history.add_argument("--json", action="store_true")
    rollback.add_argument(
        "--to", required=True, help="a version id, or a unique prefix of it or of its data version"
    )
    gc = commands.add_parser(
        "gc", help="delete what no kept version (nor the current one) names, listing every file"
    )
    gc.add_argument("datasets", nargs="*", help="dataset ids (default: every dataset)")
    gc.add_argument("--dry-run", action="store_true", help="list what would be deleted, delete nothing")


def _become_verbose(argv: list[str] | None) -> None:
    """Turn ``--verbose`` on: from the command line, by starting again (Dagster was loaded quietly along
    with this module, since quiet imports it); when called in-process, by lifting the filters."""
    settings.ask_verbose()
    if argv is None:
        os.execv(sys.executable, [sys.executable, "-m", "mnist_assets.cli", *sys.argv[1:]])
    quiet.uninstall()


def _refresh_command(args) -> int:
    """``refresh`` or ``prepare``: run the stale steps with their progress on stderr, then print the
    summary (``prepare``: where everything is). Exit 2 for a catalog error, 1 for a failed step."""
    import dagster as dg

    from mnist_assets import defs
    from mnist_assets.rebuild import progress
    from mnist_assets.rebuild.refresh import refresh as run_refresh

    datasets = [args.dataset] if args.command == "prepare" else args.datasets
    with dg.DagsterInstance.get() as instance, progress.for_stream(sys.stderr) as shown:
        try:
            summary = run_refresh(
                defs,
                instance,
                datasets,
                dry_run=getattr(args, "dry_run", False),
                verify=args.verify,
                progress=shown,
                select=getattr(args, "select", None),
                # the steps' own messages (downloads, epochs, warnings), not Dagster's debug events
                console_log_level="DEBUG" if settings.verbose() else "INFO",
            )
        except ValueError as error:
            print(f"mnist-assets {args.command}: {error}", file=sys.stderr)
            return 2
        for line in summary.catalog_errors.values():  # the good datasets were refreshed all the same
            print(f"mnist-assets {args.command}: {line}", file=sys.stderr)
        if args.command == "prepare":
            return 2 if summary.catalog_errors else _print_prepared(instance, defs, args.dataset, summary)
    if summary.datasets or not summary.catalog_errors:
        print(json.dumps(summary.to_dict(), indent=2))
    return 2 if summary.catalog_errors else 1 if summary.failed or summary.blocked else 0


def _definitions_refused(command: str) -> int | None:
    """Load the definitions (catalog and MNIST_ASSETS_* settings); a mistake in a setting or in the
    catalog file as a whole is printed as its one line (a traceback only with --verbose): exit 2."""
    from mnist_assets.settings import SettingError

    try:
        from mnist_assets import definitions  # noqa: F401
    except SettingError as error:
        if settings.verbose():
            raise
        print(f"mnist-assets {command}: {error}", file=sys.stderr)
        return 2
    return None


def _versions_command(args) -> int:
    import dagster as dg

    from mnist_assets import defs, history

    if args.command == "gc":
        removed = history.collect(defs, args.datasets, dry_run=args.dry_run)
        verb = "would delete" if args.dry_run else "deleted"
        for entry in removed:
            print(f"{verb} {entry.bytes:>12} B  {entry.path}  ({entry.why})")
        print(f"{verb} {len(removed)} files, {sum(e.bytes for e in removed)} bytes in total")
        return 0
    where = history.target(defs, args.dataset, args.asset, args.partition)
    with dg.DagsterInstance.get() as instance:
        if args.command == "rollback":
            print(json.dumps(history.rollback(instance, where, args.to), indent=2))
            return 0
        rows = history.history(instance, where)
    if args.json:
        print(json.dumps([row.to_dict() for row in rows], indent=2))
        return 0
    print(f"{'version':33} {'committed at':25} {'data version':17} {'current':7}  metrics")
    for row in rows:
        metrics = "  ".join(f"{k}={v}" for k, v in row.metrics.items())
        current = "yes" if row.current else ""
        print(f"{row.version:33} {row.committed_at:25} {row.data_version[:16]:17} {current:7}  {metrics}")
    return 0


def _print_prepared(instance, defs, dataset: str, summary) -> int:
    """What ``prepare`` prints: where everything is now, and whether all of it is there (exit 0)."""
    from mnist_assets.status import dataset_status

    rows = dataset_status(instance, defs, dataset)
    ready = all(r["materialized"] for r in rows) and not summary.failed and not summary.blocked
    document = {
        "dataset": dataset,
        "ready": ready,
        "storage": settings.storage(),
        "ran": [step.label for step in summary.ran],
        "failed": [{"asset": s.asset, "partition": s.partition, "error": s.error} for s in summary.failed],
        "blocked": [
            {"asset": s.asset, "partition": s.partition, "by": s.blocked_by} for s in summary.blocked
        ],
        "artifacts": [
            {k: r.get(k) for k in ("asset", "partition", "path", "data_version", "rows", "materialized")}
            for r in rows
        ],
    }
    print(json.dumps(document, indent=2))
    return 0 if ready else 1


if __name__ == "__main__":
    sys.exit(main())
