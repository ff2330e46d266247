"""`piddm demo --quick`: every stage of the main job runs and the report is written."""

import json

import torch

from piddm_fem.recipe import run_demo


def test_quick_demo_runs_every_stage_and_resumes(cli, tmp_path):
    out = tmp_path / "demo"
    code, stdout, err = cli("demo", "--quick", "--out", out, "--device", "cpu")
    assert code == 0, err
    report = (out / "report.md").read_text()
    for row in ("| teacher |", "| PIDDM-1 |", "| PIDDM-ref |", "| lambda=0 |", "| diffusionpde-fd |",
                "| dps-weak |", "| pidm |", "| eci |", "| direct |", "| fno |", "## Task: forward",
                "## Task: inverse", "## Task: reconstruct"):
        assert row in report
    results = json.loads((out / "compare.json").read_text())
    assert results["reference"]["residual_fem"]["max"] < 1e-10
    # Firedrake and the torch operator agree on model samples too
    for m in results["methods"]:
        if "sample" in m:
            fem, torch_ = m["sample"]["residual_fem"]["mean"], m["sample"]["residual"]["mean"]
            assert abs(fem - torch_) <= 1e-6 * fem
    assert (out / "student" / "physics_start.pt").is_file()  # the lambda = 0 row: the run before the penalty
    for png in ("samples.png", "tasks_forward.png", "tasks_inverse.png", "tasks_reconstruct.png"):
        assert (out / png).stat().st_size > 10_000
    # a second run finds every stage done and only rewrites the report
    code, stdout, _ = cli("demo", "--quick", "--out", out, "--device", "cpu")
    assert code == 0 and stdout.count("skipped") == 4
    # the full recipe is refused in a folder of the quick one (its stages would be skipped and
    # the report would describe a run that never happened)
    code, _, err = cli("demo", "--out", out, "--device", "cpu")
    assert code == 2 and "other settings" in err and "add --quick" in err and "Traceback" not in err

    # run as a library function, the demo uses every core and gives the caller's thread count back
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_demo(out, quick=True, device="cpu")
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
