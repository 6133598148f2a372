"""Where artifacts live, from the bottom up: ``files`` (shared helpers), ``faults`` (a storage fault as one
sentence), ``records`` (what commits a multi-file artifact), ``versions`` (retention, rollback, gc),
``backends`` (the protocol) with one module per backend (``local``, ``object``) chosen in ``registry``,
``leases`` (one builder per partition), and the Dagster adapters on top (``artifact_io``, ``io_managers``)."""
