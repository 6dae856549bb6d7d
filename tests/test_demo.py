"""`make demo` end to end at toy scale: every stage runs and the report, plot and student are written."""

import json
import os

from trl_t3d.demo import parse_args, run_demo


def test_demo_pipeline_runs_end_to_end(tmp_path):
    args = parse_args(
        [
            "--output_dir", str(tmp_path),
            "--teacher_steps", "20",
            "--num_prompts", "32",
            "--distill_steps", "3",
            "--eval_examples", "16",
            "--tokens_per_step", "1", "4",
        ]
    )  # fmt: skip
    summary = run_demo(args)
    assert os.path.getsize(tmp_path / "frontier.png") > 0
    report = json.loads((tmp_path / "demo_report.json").read_text())
    assert set(report["reports"]) == {"teacher", "T3D student"}
    for reports in report["reports"].values():
        assert [r["task"] for r in reports] == ["arithmetic", "permutation_skewed"]
        for r in reports:
            assert [x["tokens_per_step"] for x in r["results"]] == [1, 4]
            assert all(0.0 <= x["accuracy"] <= 1.0 and x["nfe"] > 0 for x in r["results"])
    assert "| teacher | arithmetic |" in summary["table"]
    for name in ("config.json", "model.safetensors", "diffusion_generation_config.json", "README.md"):
        assert (tmp_path / "student" / name).exists(), name
