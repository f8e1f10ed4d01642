"""`make bench` rewrites its own report and keeps the sections written by hand."""

from __future__ import annotations

from pathlib import Path

from bench.run import KEPT_BY_HAND, keep_by_hand

RESULTS = Path(__file__).resolve().parents[1] / "bench" / "RESULTS.md"


def test_a_run_replaces_the_report_and_keeps_what_is_below_the_marker() -> None:
    old = f"# Benchmark results\nold figures\n\n{KEPT_BY_HAND}\n\n## Pod (by hand)\nkept\n"
    new = keep_by_hand("# Benchmark results\nnew figures\n", old)
    assert new == f"# Benchmark results\nnew figures\n\n{KEPT_BY_HAND}\n\n## Pod (by hand)\nkept\n"
    assert keep_by_hand(new.split(KEPT_BY_HAND)[0], new) == new  # stable over runs


def test_without_the_marker_the_report_is_the_whole_file() -> None:
    assert keep_by_hand("# report\n", "# old report\n") == "# report\n"


def test_the_committed_results_keep_the_hand_written_sections_below_the_marker() -> None:
    text = RESULTS.read_text()
    assert text.count(KEPT_BY_HAND) == 1
    kept = text.split(KEPT_BY_HAND)[1]
    for heading in ("## Pod benchmark: the worker behind the real daprd",
                    "## Sidecar transport CPU per call"):
        assert heading in kept
