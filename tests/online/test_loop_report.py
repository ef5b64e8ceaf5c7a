"""The loop's per-round table and plot from a loop.json-shaped state."""

from __future__ import annotations

from pathlib import Path

from online.loop import loop_markdown, plot_rounds


def _round(k: int, ctr_t: float) -> dict:
    arms = {a: {"ctr": c, "reformulation_rate": 0.3, "never_exposed_share": 0.1, "long_play_rate": 0.05,
                "session_success": 0.6, "recall_relevant": 0.4, "relevant_ever_exposed_share": 0.1 + k / 10,
                "users": 10, "requests": 20} for a, c in (("control", 0.1), ("treatment", ctr_t))}
    delta = {"ctr": {"delta_rel": ctr_t / 0.1 - 1, "ci_low": -0.01, "ci_high": 0.2},
             "reformulation_rate": {"delta_rel": 0.0, "ci_low": None, "ci_high": None},
             "never_exposed_share": {"delta_rel": None}}
    return {"round": k, "arms": arms, "deltas": {"treatment": delta}}


def test_markdown_and_plot(tmp_path: Path) -> None:
    state = {"world": "w", "sessions": 100, "recipe": "top1", "steps": 5, "rounds": [_round(0, 0.1), _round(1, 0.11)],
             "total_s": 600}
    md = loop_markdown(state, tmp_path)
    assert "| 1 | treatment | 0.1100 |" in md and "+10.00% [-1.00, +20.00]" in md and "10.0 min" in md
    plot_rounds(state["rounds"], tmp_path / "loop.png")
    assert (tmp_path / "loop.png").stat().st_size > 1000
