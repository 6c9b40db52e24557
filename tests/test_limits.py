"""Size-like flags past firepe.limits are refused at once, before any work (issue 17, item 2)."""

import time

import pytest

from firepe import limits
from tests.helpers import TINY, one_line_error

HUGE = str(10**9)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    from tests.helpers import task_base

    return task_base(tmp_path_factory.mktemp("limits"))


@pytest.mark.parametrize("argv,match", [
    (["finetune", "{run}", "--task", "passkey", "--out", "{tmp}/ft", "--batch-size", HUGE], "batch_size x seq_len"),
    (["finetune", "{run}", "--task", "passkey", "--out", "{tmp}/ft", "--seq-len", HUGE], "seq_len must be at most"),
    (["finetune", "{run}", "--task", "passkey", "--out", "{tmp}/ft", "--steps", str(10**12)], "steps must be at most"),
    (["score", "{run}", "--max-new-tokens", HUGE, "--out", "{tmp}/sc"], "--max-new-tokens must be at most"),
    (["score", "{run}", "--lengths", HUGE, "--out", "{tmp}/sc"], "length must be at most"),
    (["score", "{run}", "--examples", HUGE, "--out", "{tmp}/sc"], "--examples must be at most"),
    (["score", "{run}", "--batch-tokens", HUGE, "--out", "{tmp}/sc"], "--batch-tokens must be at most"),
    (["eval", "{run}", "--lengths", HUGE, "--out", "{tmp}/ev"], "length must be at most"),
    (["eval", "{run}", "--lengths", "96", "--val-tokens", str(2**50), "--out", "{tmp}/ev"],
     "--val-tokens must be at most"),
    (["generate", "{run}", "--prompt", "a", "--max-new-tokens", HUGE], "--max-new-tokens must be at most"),
    (["train", "--out", "{tmp}/t", "--seq-len", HUGE], "seq_len must be at most"),
    (["train", "--out", "{tmp}/t", "--batch-size", HUGE], "batch_size x seq_len"),
    (["train", "--out", "{tmp}/t", "--val-tokens", str(2**50)], "val_tokens must be at most"),
    (["compare", "--out", "{tmp}/c", "--max-factor", HUGE], "longest length"),
])
def test_huge_sizes_are_refused_at_once(base, tmp_path, capsys, argv, match):
    run, _ = base
    t0 = time.perf_counter()
    one_line_error(capsys, [a.format(run=run, tmp=tmp_path) for a in argv] + (TINY[4:5] if argv[0] != "generate"
                                                                             else []), match)
    assert time.perf_counter() - t0 < 20
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_the_bounds_themselves_are_accepted():
    limits.check_at_most(limits.MAX_LENGTH, "x", limits.MAX_LENGTH)
    with pytest.raises(ValueError, match=r"x must be at most 1,048,576 tokens \(firepe.limits\), got 1,048,577"):
        limits.check_at_most(limits.MAX_LENGTH + 1, "x", limits.MAX_LENGTH, " tokens")


def test_a_refused_score_into_an_existing_folder_leaves_it_as_it_was(base, tmp_path, capsys):
    run, _ = base
    out = tmp_path / "sc"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    one_line_error(capsys, ["score", run, "--max-new-tokens", HUGE, "--out", out, "--no-progress"],
                   "--max-new-tokens must be at most")
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_cpu_description_names_the_model_and_the_widest_instruction_set():
    from firepe.devices import cpu_description

    intel = "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Processor\nflags\t\t: fpu sse2 avx avx2 avx512f avx512bw\n"
    amd = "model name\t: AMD EPYC 7B13\nflags\t\t: fpu sse2 avx avx2 fma\n"
    arm = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes\nCPU implementer\t: 0x41\n"
    assert cpu_description(intel) == "Intel(R) Xeon(R) Processor, AVX-512"
    assert cpu_description(amd) == "AMD EPYC 7B13, AVX2"
    assert cpu_description(arm).endswith(", NEON")
    assert cpu_description("").endswith("unknown instruction set")
