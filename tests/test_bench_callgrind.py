"""The instruction-count bench (bench/callgrind.py, issue 19 goal 6): its workloads do the work they are
named after, and without valgrind the pipeline bench says so instead of failing."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import callgrind


def test_the_engine_workload_processes_exactly_its_changes_per_pass() -> None:
    callgrind.inner_engine(50, 1)  # raises if a pass handled more or fewer changes than it counts


def test_the_rules_workload_evaluates_the_pipeline_rule_set() -> None:
    callgrind.inner_rules(20, 1)


def test_the_delivery_workload_sends_its_pages_to_a_mock_in_its_own_process() -> None:
    callgrind.inner_delivery(20, max(callgrind.PASSES))  # raises unless every queued page was sent, each once


def test_the_bare_post_workload_posts_pages_the_mock_accepts() -> None:
    callgrind.inner_post(5, max(callgrind.PASSES))  # raises if the mock refused one (the floor of a send)


def test_without_valgrind_the_counts_are_skipped_with_a_note(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no valgrind on it
    assert callgrind.run(tickets=10, changes=50) == []
    assert callgrind.lines([]) == ["6. instruction counts: skipped (valgrind is not installed)"]


def test_a_count_is_reported_per_unit_with_the_ratio_to_the_baseline() -> None:
    now = [callgrind.Count("engine", "change", 200, 1_500_000.0)]
    before = [callgrind.Count("engine", "change", 200, 2_000_000.0)]
    [line] = callgrind.lines(now, before)
    assert "instructions per change (engine" in line
    assert "1,500,000" in line and "before 2,000,000" in line and "after / before 0.750" in line


def test_a_page_sent_is_reported_against_a_bare_post_of_it() -> None:
    counts = [
        callgrind.Count("delivery", "page sent", 200, 2_600_000.0),
        callgrind.Count("post", "bare POST", 200, 1_300_000.0),
    ]
    assert callgrind.lines(counts)[-1] == "   a page sent / a bare POST of it: 2.00x"
    assert not any("bare POST of it" in line for line in callgrind.lines(counts[:1]))
