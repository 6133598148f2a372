"""Rebuilding: what is stale and why, past attempts, and what acts on it (refresh, the sensor, the schedule).

One floor, above the assets it judges and runs (see ``mnist_assets_tests/test_layers.py``): judging,
:mod:`.staleness` and :mod:`.attempts`, reads the instance and the stores; acting, :mod:`.steps`,
:mod:`.progress`, :mod:`.automation`, :mod:`.selection`, :mod:`.observing`, :mod:`.runs` and
:mod:`.refresh`, runs what they find. The steps below it ask rebuilding what is fresh and what last
failed through :mod:`.judgement`, which the definitions hand down to the graph. Nothing is imported
here, so importing one module pulls in no other.
"""
