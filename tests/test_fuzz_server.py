"""A seeded, bounded run of the hostile-client fuzz (tests/fuzz_server.py) against one real server:
one case of each kind first (the slow clients and the stalled stream in background threads), then
a seeded draw of mutated bodies, odd headers and paths, disconnects and bursts. No case may kill
the server, hang it, leak a slot, KV-cache positions or memory, get a malformed answer, or leave
a traceback in its log; the known greedy answer must stay the same throughout. `make fuzz-server`
runs the same with thousands of cases.
"""

from __future__ import annotations

from fuzz_server import FAILURES, KINDS, Runner, summary

CASES = 300
SEED = 20261207


def test_hostile_clients_leave_the_server_serving() -> None:
    report = Runner(SEED, list(KINDS), lambda line: None).run(list(range(CASES)))
    text = summary(report, SEED)
    assert report.cases == CASES, text
    assert set(report.kinds) == set(KINDS), text  # every kind ran
    answers = report.checks["known answer"] + report.checks["an answer beside background clients"]
    # the end's known answer is always compared exactly (every client done, the server idle)
    assert answers >= CASES // 50 and report.checks["end"] == 1, text
    assert {category: report.count(category) for category in FAILURES} == dict.fromkeys(FAILURES, 0), text
