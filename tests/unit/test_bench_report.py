"""bench/report.py: which figures the generated bench/README.md shows, and the target verdicts."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import report  # noqa: E402


def _run(time: str, rows: dict[str, list[dict]], device: str = "cpu", full: bool = False) -> dict:
    return {"time": time, "machine": {"device": device}, "profile": {"full_size": full},
            "models": {m: {"size": 64, "rows": r} for m, r in rows.items()}}


def _method(case: str, baseline: str, ratio: float, **extra) -> dict:
    return {"case": case, "kind": "method", "baseline": baseline, "time_ratio": ratio, "steps": 6,
            "seconds_median": 1.0, "peak_bytes_median": 2**20, **extra}


def _base(case: str) -> dict:
    return {"case": case, "kind": "baseline", "steps": 6, "seconds_median": 1.0, "peak_bytes_median": 2**20}


def test_latest_rows_keep_the_newest_figure_of_each_case_with_its_own_baseline():
    old = _run("t1", {"sd15": [_base("plain_a"), _method("ddim_invert", "plain_a", 0.8),
                               _method("appearance_transfer", "plain_a", 2.4)]})
    new = _run("t2", {"sd15": [_base("plain_b"), _method("appearance_transfer", "plain_b", 2.1)]})
    picked = report.latest_rows([new, old])  # newest first
    assert [run["time"] for run, _ in picked] == ["t2", "t1"]
    assert [r["case"] for r in picked[0][1]["sd15"]] == ["plain_b", "appearance_transfer"]
    assert [r["case"] for r in picked[1][1]["sd15"]] == ["plain_a", "ddim_invert"]  # the older appearance row is gone


def test_newest_row_and_training_verdict():
    slower = _method("analogy_trainer", "analogy_plain_loop", 1.5, steps_per_second=0.01, memory_ratio=0.8,
                     ms_per_step=100.0, losses_match=True)
    faster = dict(slower, time_ratio=0.9, memory_ratio=0.7)
    runs = [("2026-11-23-cpu", [_run("t2", {"sd15": [faster]}, full=True), _run("t1", {"sd15": [slower]}, full=True)])]
    row, run = report._newest_row(runs, "analogy_trainer", "sd15", "cpu", True)
    assert run["time"] == "t2" and row["time_ratio"] == 0.9
    assert report._newest_row(runs, "analogy_trainer", "sd15", "cpu", False) == (None, None)
    assert report._cell(faster, None, None, False)[1] is True
    assert report._cell(slower, None, None, False)[1] is False  # slower than the plain loop: not met
    assert report._cell(dict(faster, memory_ratio=1.2), None, None, False)[1] is False
    assert report._cell(dict(faster, losses_match=False), None, None, False)[1] is False  # not the same loss


def test_floor_targets_judge_the_ratio_over_the_floor():
    near = _method("translation", "plain", 4.8, floor_ratio=4.5, time_over_floor=1.067)
    far = _method("translation", "plain", 6.9, floor_ratio=4.5, time_over_floor=1.533)
    limit = report.FloorLimit(1.1)
    assert report._cell(near, limit, None, False) == ("4.80× = 1.07× its floor of 4.50×", True)
    assert report._cell(far, limit, None, False)[1] is False
    assert report._cell(_method("translation", "plain", 1.0), limit, None, False)[1] is False  # no floor: not met
    table = "\n".join(report.run_table("f", {**_run("t", {"sd15": [_base("plain"), near]}),
                                             "machine": {"device": "cpu", "cpu": "x", "cpu_cores": 2,
                                                         "torch_threads": 1, "torch": "t", "comfyui": "c",
                                                         "pack_commit": "p", "python": "3"},
                                             "profile": {"steps": 6, "appearance_steps": 8, "appearance_skip": 3,
                                                         "repeats": 3}, "memory_method": "m"},
                                      {"sd15": [_base("plain"), near]}))
    assert "| 4.50 | 1.07 |" in table


def test_flux_rows_name_their_model_file_and_a_row_without_baseline_says_so():
    trainer = {"case": "analogy_trainer", "kind": "method", "steps": 3, "seconds_median": 3.0, "ms_per_step": 1000.0,
               "steps_per_second": 1.0, "peak_bytes_median": 2**20}
    run = {**_run("t", {"flux": [_base("plain"), _method("appearance_transfer", "plain", 2.5), trainer]}),
           "machine": {"device": "cpu", "cpu": "x", "cpu_cores": 2, "torch_threads": 1, "torch": "t", "comfyui": "c",
                       "pack_commit": "p", "python": "3", "load_average": [2.0], "load_average_end": [3.0]},
           "profile": {"steps": 6, "appearance_steps": 8, "appearance_skip": 3, "repeats": 3}, "memory_method": "m"}
    run["models"]["flux"]["checkpoint"] = "test_flux_wide.safetensors"
    table = "\n".join(report.run_table("f", run, {"flux": run["models"]["flux"]["rows"]}))
    assert "| flux (test_flux_wide) 64px | appearance_transfer (vs plain) |" in table
    assert "| 1 (baseline) |" in table and "| no baseline |" in table  # the trainer has no plain loop on FLUX
    assert "at start [2.0], at end [3.0]" in table
    assert report.model_label("sd15", {"checkpoint": "test_sd15.safetensors"}) == "sd15"
