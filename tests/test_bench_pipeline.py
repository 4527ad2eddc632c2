"""The pipeline bench (bench/pipeline.py) runs end to end with tiny figures, so it cannot rot unnoticed."""

from __future__ import annotations

import os
import time

from bench import pipeline


def test_cpu_seconds_counts_this_process_cpu_from_proc() -> None:
    before = pipeline.cpu_seconds(os.getpid())
    end = time.process_time() + 0.2
    while time.process_time() < end:
        pass
    assert pipeline.cpu_seconds(os.getpid()) - before >= 0.15


def test_the_bench_drives_serve_through_every_phase_and_prints_each_goal() -> None:
    cfg = pipeline.Config(
        idle_seconds=0.3, seconds=0.5, rates=(20.0,), page_every=2, keepup_count=10, keepup_rate=40.0,
        workers=(2,), delivery_seconds=0.5, settle_seconds=0.1, callgrind=False,
    )  # fmt: skip
    lines: list[str] = []
    out = pipeline.run(cfg, print_=lines.append)

    [report] = out["reports"]["now"]
    assert list(report.phases) == ["idle", "20/s", "keep-up", "delivery x2"]
    for phase in report.phases.values():
        assert phase.errors == 0, phase
        assert phase.drained, phase
        assert phase.pages_accepted == phase.pages_expected, phase
    assert report.phases["20/s"].sent == 10 and report.phases["20/s"].pages_expected == 5
    assert report.phases["keep-up"].pages_expected == 10
    assert report.phases["delivery x2"].pages_expected == 10  # 2 workers / 0.1 s x 0.5 s
    assert report.phases["keep-up"].cpu_total > 0  # the server's CPU, read from /proc
    # 10 pages through 2 workers against the 100 ms mock: most go out after the burst's last 202, at most 20/s
    assert 0 < report.phases["delivery x2"].rate_after_stored <= 20 * 1.1
    [floors] = out["floors"]
    assert floors.keep_up.sent == 10 and floors.keep_up.errors == 0
    assert floors.keep_up.sends_cpu > 0, "the bare requests POSTs of the floor ran against the mock"
    assert floors.low_rate is not None and floors.low_rate.sent == 10 and floors.low_rate.pages_expected == 5
    senders = floors.senders[2]
    assert senders.pages_accepted == 10 and senders.first_to_last > 0  # at the mock, from another process
    # two senders at once against a 100 ms mock: 10 pages in 5 rounds of two, the last 4 rounds after the first
    # (0.4 s); one after another they would take 0.9 s
    assert 0.4 * 0.95 <= senders.first_to_last < 0.7
    text = "\n".join(lines)
    for goal in ("1. idle", "1. cores at 20/s", "floor at 20/s: durable endpoint + bare POSTs, cores",
                 "ratio ticketpager (all its work) / floor",
                 "2. CPU s per 1,000", "floor: durable endpoint + bare POSTs",
                 "3. 10 pages at 40/s", "4. webhook p50",
                 "5. delivery, 2 workers", "bare requests senders, 2 at once, same mock: of 20/s",
                 "ratio ticketpager / bare senders", "after the burst's last 202"):  # fmt: skip
        assert goal in text
    assert text.rstrip().endswith("0 / 0 / 0  0 / 0 / 0")


def test_the_after_before_ratio_is_the_median_of_the_rounds_not_the_higher_one() -> None:
    """Two rounds per tree: the ratio is of their mean (4.0 / 4.5), not of the higher round of each (4.5 / 5.0)."""

    def report(label: str, cpu: float) -> pipeline.TreeReport:
        return pipeline.TreeReport(label, {"keep-up": pipeline.Phase("keep-up", sent=1000, cpu_total=cpu)})

    before = [report("before", 4.0), report("before", 5.0)]
    after = [report("now", 3.5), report("now", 4.5)]
    [line] = pipeline.ratio_lines(before, after, pipeline.Config(rates=()))
    assert "CPU per 1,000 (keep-up) 0.89" in line
