"""The records that commit multi-file artifacts: a record's file name, and which content files a stored
one names (what garbage collection must keep, and what a rollback verifies)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from mnist_assets.manifest import CheckpointRecord, Manifest


@dataclass(frozen=True)
class RecordKind:
    """A commit's record: its file name, and which content files a stored one names, with their sha256
    where it records one (what garbage collection must keep, and what a rollback verifies)."""

    name: str
    digests: Callable[[bytes], Mapping[str, str | None]]

    def names(self, data: bytes) -> Iterable[str]:
        return self.digests(data).keys()


def _checkpoint_digests(data: bytes) -> dict[str, str | None]:
    record = CheckpointRecord.model_validate_json(data)
    return {record.file: record.sha256, **dict.fromkeys(record.logs)}


MANIFEST = RecordKind(
    "_manifest.json", lambda data: {s.file: s.sha256 for s in Manifest.from_json(data).shards}
)


CHECKPOINT = RecordKind("checkpoint.json", _checkpoint_digests)
