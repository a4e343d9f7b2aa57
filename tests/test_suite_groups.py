"""The suite's xdist groups work: tests that share an expensive fixture (the micro demo, the data
engine's runs, the test servers) carry one `xdist_group`, and `--dist loadgroup` (the README's test
command) must send each group to one worker. pytest 9.2 with pytest-xdist 3.8 silently dropped the
groups (every shared fixture ran once per worker: over a minute of CI time); this test fails then."""

from __future__ import annotations

import pytest


@pytest.mark.xdist_group("engine_runs")
def test_xdist_groups_are_honoured(request):
    if not request.config.getvalue("loadgroup"):
        pytest.skip("not run with --dist loadgroup")
    assert request.node.nodeid.endswith("@engine_runs"), request.node.nodeid
