"""Rebuilding: what is stale and why, past attempts, and what acts on it (refresh, the sensor, the schedule).

Two floors (see ``mnist_assets_tests/test_layers.py``): judging, :mod:`.staleness` and :mod:`.attempts`,
reads the instance and the stores and sits below storage and the assets (a lease holder judges whether
the partition it waited for is fresh; the best model lists each configuration's last failure); acting,
:mod:`.steps`, :mod:`.progress`, :mod:`.automation`, :mod:`.selection` and :mod:`.refresh`, sits above the
assets it runs.
Nothing is imported here, so importing a judging module pulls in nothing of the acting floor.
"""
