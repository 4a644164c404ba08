"""`kgslb backend`'s report of a site's hello backend: one readable line, not the control
endpoint's JSON as a Python dict."""

from __future__ import annotations

import pytest

from kgslb.backends import describe_site

STATE = {"ip": "127.10.23.40", "port": 80, "site": "SITE2", "running": True, "fault": "none"}


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({}, "s2: the hello backend (SITE2) at http://127.10.23.40:80/ is running"),
        ({"running": False}, "s2: the hello backend (SITE2) at http://127.10.23.40:80/ is stopped"),
        ({"fault": "error"}, "... is running, answering HTTP 500"),
        ({"fault": "hang"}, "... is running, hanging (no reply)"),
        ({"site": ""}, "s2: the hello backend at http://127.10.23.40:80/ is running"),
    ],
)
def test_a_site_is_described_in_one_line(changes: dict[str, object], expected: str) -> None:
    line = describe_site("s2", {**STATE, **changes})

    if expected.startswith("..."):
        assert line.endswith(expected[4:]), line
    else:
        assert line == expected
    assert "{" not in line
