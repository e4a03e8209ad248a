"""The harness the benchmark and the serving tests share: ports, process trees, /metrics parsing,
the load generator's bookkeeping, and a real BentoML server (the benchmark's floor) started,
measured and stopped."""

from __future__ import annotations

import json
import math
import sys
import time

import pytest

from bench import loadgen as lg
from bench.flights import predict_requests
from bench.harness import (
    ProcessGroup,
    ServerProcess,
    free_port,
    histogram_delta,
    http_get,
    process_tree,
    start_redis,
    still_running,
)
from bench.phases import FixedResponseServer, Run, measure
from flight_delay.monitoring import metric_total, parse_metrics

EXPOSITION = """\
# HELP flight_delay_requests_total Requests.
# TYPE flight_delay_requests_total counter
flight_delay_requests_total{endpoint="predict",outcome="ok"} 7.0
flight_delay_requests_total{endpoint="predict",outcome="client_error"} 2.0
flight_delay_requests_total{endpoint="feedback",outcome="ok"} 1.0
# HELP lat Latency.
# TYPE lat histogram
lat_bucket{endpoint="predict",le="0.001"} 5.0
lat_bucket{endpoint="predict",le="0.01"} 9.0
lat_bucket{endpoint="predict",le="+Inf"} 10.0
lat_count{endpoint="predict"} 10.0
lat_sum{endpoint="predict"} 0.05
"""


def test_metrics_are_parsed_and_summed_by_label():
    scrape = parse_metrics(EXPOSITION)
    assert metric_total(scrape, "flight_delay_requests") == 10.0  # the counter's _total spelling matches
    assert metric_total(scrape, "flight_delay_requests_total", endpoint="predict") == 9.0
    assert metric_total(scrape, "flight_delay_requests_total", endpoint="predict", outcome="ok") == 7.0
    assert metric_total(scrape, "flight_delay_requests_total", endpoint="nowhere") == 0.0


def test_histogram_delta_between_two_scrapes():
    before = parse_metrics(
        EXPOSITION.replace("} 5.0", "} 0.0")
        .replace("} 9.0", "} 0.0")
        .replace("} 10.0", "} 0.0")
        .replace("} 0.05", "} 0.0")
    )
    delta = histogram_delta(before, parse_metrics(EXPOSITION), "lat", endpoint="predict")
    assert delta == {"count": 10.0, "mean_ms": pytest.approx(5.0), "p50_le_ms": 1.0, "p99_le_ms": math.inf}
    assert histogram_delta(before, before, "lat") is None


def test_free_port_is_free():
    port = free_port()
    with pytest.raises(OSError):
        http_get(port, "/", timeout=1)


def test_a_process_group_is_stopped_with_its_children(tmp_path):
    # A parent that starts a child in a session of its own, as BentoML's workers are.
    script = (
        "import subprocess, sys, time; "
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], start_new_session=True); "
        "time.sleep(60)"
    )
    group = ProcessGroup.start([sys.executable, "-c", script], tmp_path / "log")
    deadline = time.monotonic() + 10
    while len(group.tree) < 2 and time.monotonic() < deadline:
        group.snapshot()
        time.sleep(0.05)
    assert len(group.tree) == 2
    group.stop(timeout=5)
    assert still_running(group.tree) == []


def test_open_loop_counts_every_request_and_measures_from_the_schedule(tmp_path):
    run = Run(lambda phase: None)
    with FixedResponseServer(tmp_path / "fixed.log") as fixed:
        requests = [lg.encode_post("127.0.0.1", fixed.port, "/x", b"{}")]
        phase = run.add(measure(fixed, lambda: lg.open_loop("127.0.0.1", fixed.port, requests, 200, 1.0)))
    r = phase.result
    assert r.scheduled == 200 and r.ok == 200 and r.failed == 0 and r.unanswered == 0
    assert 0 < r.percentile(50) <= r.percentile(99) < 50  # milliseconds, on loopback
    assert run.phases == [phase]


def test_failures_count_as_infinitely_slow():
    r = lg.Result("t", rate=10.0, duration=1.0, connections=1)
    r.scheduled = 10
    for _ in range(9):
        r.latencies.append(0.001)
    r.statuses[500] += 1
    assert r.failed == 1 and r.ok == 9
    assert r.percentile(50) == pytest.approx(1.0)
    assert math.isinf(r.percentile(99))  # the one failure is in the tail


@pytest.mark.parametrize("answers", ["orjson", "pydantic"])
def test_the_floor_service_runs_under_the_harness(tmp_path, answers):
    """The benchmark's floor as a real server: ready, answers a flight (the same answer whichever
    way it encodes it), stopped with its workers."""
    import os

    env = {
        **os.environ,
        "BENTOML_HOME": str(tmp_path / "home"),
        "BENTOML_DO_NOT_TRACK": "True",
        "FLIGHT_DELAY_FLOOR_ANSWERS": answers,
    }
    server = ServerProcess("bench.floor:FloorService", env, tmp_path / "floor.log")
    with server:
        assert server.worker_pids and all(mb > 0 for mb in server.rss().values())
        flight = {
            "carrier": "UA",
            "flight": 1545,
            "tailnum": "N14228",
            "origin": "EWR",
            "dest": "IAH",
            "scheduled_departure": "2013-03-31T17:15:00-04:00",
            "distance": 1400,
        }
        request = predict_requests(server.port, [flight])[0]
        import asyncio

        status, body = asyncio.run(lg.fetch("127.0.0.1", server.port, request))
        assert status == 200
        assert json.loads(body) == {
            "request_id": "0" * 32,
            "flight_key": "2013-03-31:UA1545:EWR",
            "probability": 0.0,
            "delayed": False,
            "threshold": 0.5,
            "model_version": "floor:0",
            "variant": "champion",
            "feature_age_seconds": {},
            "unknown": [],
        }
        assert server.cpu() > 0
        tree = dict(server.group.tree)
    assert still_running(tree) == []


def test_a_server_whose_port_was_taken_before_it_bound_starts_on_another(tmp_path):
    """free_port() only says a port is free now; whoever binds it first gets it."""
    import os
    import socket

    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "home"), "BENTOML_DO_NOT_TRACK": "True"}
    server = ServerProcess("bench.floor:FloorService", env, tmp_path / "floor.log")
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", server.port))
        squatter.listen()
        taken = server.port
        with server:
            assert server.port != taken and server.url.endswith(f":{server.port}")
            assert http_get(server.port, "/readyz")[0] == 200
    assert "Address already in use" in (tmp_path / "floor.log").read_text()


def test_a_driver_stopped_by_sigterm_stops_the_servers_it_started(tmp_path):
    """Servers run in sessions of their own: only the driver's own unwinding stops them."""
    import os
    import signal
    import subprocess
    from pathlib import Path

    driver = f"""
import sys, time
sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
from bench.harness import ProcessGroup, unwind_on_sigterm
unwind_on_sigterm()
server = ProcessGroup.start(["sleep", "300"], __import__("pathlib").Path({str(tmp_path / "sleep.log")!r}))
try:
    print(server.proc.pid, flush=True)
    time.sleep(60)
finally:
    server.stop()
"""
    proc = subprocess.Popen([sys.executable, "-c", driver], stdout=subprocess.PIPE, text=True)
    server = process_tree(int(proc.stdout.readline()))  # pid -> start time
    try:
        assert still_running(server)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        assert proc.returncode != 0  # stopped, not finished
        assert still_running(server) == []
    finally:
        for pid in still_running(server):  # left behind when the test fails
            os.kill(pid, signal.SIGKILL)


def test_a_server_that_exits_is_reported_with_its_log(tmp_path):
    server = ServerProcess("no_such_module:Nothing", {"PATH": "/usr/bin:/bin"}, tmp_path / "bad.log")
    with pytest.raises(RuntimeError, match="exited with"):
        server.start().wait_ready(timeout=60)


def test_a_throwaway_redis_answers_when_started_and_is_gone_when_stopped(tmp_path):
    import redis

    server, port = start_redis(tmp_path / "redis.log")
    try:
        client = redis.Redis(port=port)
        assert client.ping() and client.config_get("save") == {"save": ""}
    finally:
        server.stop()
    with pytest.raises(redis.ConnectionError):
        redis.Redis(port=port, socket_connect_timeout=1).ping()
