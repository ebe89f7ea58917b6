"""`fab status`'s view (kvstack.status): the table from one reading, and where Prometheus is."""

from __future__ import annotations

import math

import pytest

from kvstack import REPO
from kvstack import status as st


def test_render_shows_each_node_the_cluster_and_firing_alerts():
    reading = st.Status(
        url="http://10.77.0.21:9090",
        at=0,
        nodes={
            "lab-serve1": {"engine_up": 1, "requests_per_s": 1.5, "ttft_p95_s": 0.25, "hit_vllm": 0.4,
                           "hit_l1": 0.3, "hit_l2": math.nan},
            "lab-serve2": {"engine_up": 0},
            "lab-kv1": {"kv_used_bytes": 2**30, "kv_budget_bytes": 4 * 2**30},
        },
        cluster={"requests_per_s": 1.5, "hit_vllm": 0.4},
        alerts=[{"alert": "VllmDown", "node": "lab-serve2", "severity": "critical", "summary": "gone"}],
    )  # fmt: skip
    lines = st.render(reading).splitlines()
    rows = {line.split()[0]: line.split() for line in lines[3:6]}
    assert rows["lab-serve1"][:7] == ["lab-serve1", "up", "1.50", "0.250", "40%", "30%", "-"]
    assert rows["lab-serve2"][1] == "DOWN"
    assert "1.00/4.00 GiB (25%)" in lines[3 + sorted(rows).index("lab-kv1")]
    assert lines[6].split()[:5] == ["cluster", "-", "1.50", "-", "40%"]
    assert lines[7:] == ["alerts firing: 1", "  critical VllmDown lab-serve2: gone"]
    assert reading.as_dict()["nodes"]["lab-serve1"]["hit_l2"] is None  # JSON has no NaN


def test_prometheus_is_the_first_monitoring_host():
    assert st.prometheus_url(REPO / "inventory" / "lab") == "http://10.77.0.21:9090"


def test_unreachable_prometheus_is_a_clear_error():
    with pytest.raises(st.StatusError, match="did not answer"):
        st.collect("http://127.0.0.1:9")
