"""§14 item 41: per-client receive rate limiting."""

import pytest


@pytest.mark.skip(reason="§14.41: the labkit relay has no per-client rate limiting (yet)")
def test_rate_limited_client_is_slowed_not_dropped() -> None:
    """41: with a per-client limit, 4·L bytes take about (4·L − M)/L s, nothing dropped."""
