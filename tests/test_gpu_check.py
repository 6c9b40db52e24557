"""benchmarks/gpu_check.py: refuses without CUDA; its checks that run on CPU pass there.

The suite hides CUDA (conftest.py), so the refusal is what a CPU machine sees. flex's backward does not
exist on CPU (firepe falls back to the chunked backend there), so the flex check here tests the check's
own code, not FlexAttention; the GPU run is the real test.
"""

import importlib.util
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
gpu_check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_check)
CPU = torch.device("cpu")


@pytest.mark.parametrize("argv", [[], ["--only", "flex"]])
def test_refuses_without_cuda_in_one_line(tmp_path, argv):
    res = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--out", str(tmp_path / "r.md"), *argv],
                         capture_output=True, text=True, timeout=120, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr.startswith("gpu_check: error: no usable CUDA") and res.stderr.count("\n") == 1, res.stderr
    assert not (tmp_path / "r.md").exists()


def test_an_unknown_check_is_one_line():
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--only", "flex,bogus"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "unknown check 'bogus'" in res.stderr and res.stderr.count("\n") == 1


def test_cpu_runnable_checks_pass_and_write_their_tables():
    report = gpu_check.Report()
    gpu_check.check_bf16(report, CPU)
    gpu_check.check_generate(report, CPU, new=6)
    with warnings.catch_warnings():  # flex's CPU fallback warns once per process
        warnings.simplefilter("ignore")
        gpu_check.check_flex(report, CPU, n=48)
    assert report.failed == 0 and len(report.lines) == 4
    assert all(line.startswith("PASS ") for line in report.lines)
    text = report.markdown("machine line")
    assert text.startswith("# GPU check\n\nmachine line") and "| fire init_L=96.0 |" in text


def test_a_failing_target_is_counted_and_a_crashing_check_does_not_hide_the_others(tmp_path, monkeypatch, capsys):
    def boom(report, device):
        raise RuntimeError("CUDA error: an illegal memory access")

    def fine(report, device):
        report.target("PASS", "fine", "ok")

    monkeypatch.setattr(gpu_check, "CHECKS", [("boom", boom), ("fine", fine)])
    assert gpu_check.run(tmp_path / "r.md", None, CPU) == 1
    out = capsys.readouterr().out
    assert "FAIL boom: RuntimeError: CUDA error" in out and "PASS fine: ok" in out
    assert "illegal memory access" in (tmp_path / "r.md").read_text()


def test_nccl_check_skips_with_the_reason_when_a_module_is_missing(monkeypatch):
    monkeypatch.setattr(gpu_check, "missing_modules", lambda: ["safetensors"])
    report = gpu_check.Report()
    gpu_check.check_nccl(report, CPU)
    assert report.lines == ["SKIP torchrun NCCL training: needs safetensors, not on this machine (put their "
                            "wheels' contents on PYTHONPATH to run it)"] and report.failed == 0


def test_relative_difference():
    a = torch.tensor([1.0, 2.0, 4.0])
    assert gpu_check.rel_diff(a + torch.tensor([0.0, 0.4, 0.0]), a) == pytest.approx(0.1)


def test_checks_past_the_time_budget_are_skipped_by_name(tmp_path, monkeypatch, capsys):
    ran = []
    monkeypatch.setattr(gpu_check, "CHECKS", [("a", lambda r, d: ran.append("a")), ("b", lambda r, d: ran.append("b"))])
    assert gpu_check.run(tmp_path / "r.md", None, CPU, budget=-1) == 0
    assert ran == [] and "SKIP a: the time budget of -1 s was spent (rerun with --only a)" in capsys.readouterr().out


def test_hf_check_runs_on_cpu():
    pytest.importorskip("firepe.hf", exc_type=ImportError)
    report = gpu_check.Report()
    gpu_check.check_hf(report, CPU, new=3)
    assert report.failed == 0 and report.lines[0].startswith("PASS transformers Llama"), report.lines
