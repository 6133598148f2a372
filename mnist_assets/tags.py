"""The tag and metadata keys the project writes and reads back, each spelt once.

A tag written by one module and read by another is a contract between them; keeping the strings here
(the ground floor) lets both import it downward, and shows in one screen every key a run, an asset or
a materialization may carry. Dagster's own keys (``dagster/...``) are listed too, as the names this
project reads them by.
"""

from __future__ import annotations

# -- asset tags
TOLERATES_FAILED_INPUTS = "mnist_assets/tolerates_failed_inputs"
"""Tag of an asset that chooses among its inputs (best_model): one failed input does not block it."""
OBSERVED_DAILY = "mnist_assets/observed_daily"
"""Tag of the sources that change outside the code (remote files), which daily_refresh observes; the
catalog's model configurations change only with the code, and refresh observes them."""

# -- run tags
HOLDER_TAG = "mnist_assets/lease_holder"
"""Run tag: the token of the leases the process that launched the run holds for its partitions."""
PROCESS_GONE_TAG = "mnist_assets/process_gone"
"""Set on a run marked failed because its process disappeared (its value: the pid)."""

# -- metadata keys
REUSED_FROM = "reused_from_run"
"""Metadata of a materialization that reused another run's result: that run's id."""
CATALOG_ERROR = "mnist_assets/catalog_error"
"""Metadata of a broken dataset's placeholder asset: its one-line catalog error."""
CATALOG_DATASET = "mnist_assets/dataset"
"""Metadata of a broken dataset's placeholder asset: the dataset id as the catalog lists it."""
FETCHED_FROM = "url"
"""Metadata of a raw_gzip materialization: the URL (credentials redacted) its verified bytes came from."""
SERVED_AS = "served_as"
"""Metadata of a raw_gzip materialization: how the server identified the bytes it sent (ETag,
Last-Modified, Content-Length of the response); the next urls observation compares a HEAD with it."""
PINNED = "pinned"
"""Metadata of a urls observation: the data version of the catalog's pins it was judged against."""
ANSWERED = "mirror_answered"
"""Metadata of a urls observation: whether a mirror answered (a failed one keeps the previous version)."""

# -- Dagster's own keys, as this project reads them
PARTITION = "dagster/partition"
DATA_VERSION = "dagster/data_version"
CODE_VERSION = "dagster/code_version"
ROW_COUNT = "dagster/row_count"
COLUMN_SCHEMA = "dagster/column_schema"
