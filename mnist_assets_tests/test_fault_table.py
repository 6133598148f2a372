"""The fault table in the docs is the test suite's own list of proven scenarios."""

from mnist_assets_tests import faults
from mnist_assets_tests.support import REPO


def test_docs_fault_table_matches_the_scenario_tests():
    table = REPO / "docs" / "faults.md"
    assert table.read_text() == faults.render(), "docs/faults.md is out of date: run `make docs`"


def test_every_area_of_the_issue_has_scenarios():
    scenarios = faults.load_all()
    counts = {area: sum(s.area == area for s in scenarios) for area in faults.AREAS}
    assert all(counts.values()), counts
    assert len({s.test for s in scenarios}) == len(scenarios)
