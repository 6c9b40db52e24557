"""Issue 17, item 3: checks that never ran, refused commands that wrote, errors of the wrong type, messages."""

import json
import subprocess
import sys

import pytest
import torch

from firepe import config, positions, tracking
from firepe.cli import main
from firepe.tasks.base import read_jsonl
from tests.helpers import TINY, one_line_error


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    from tests.helpers import task_base

    return task_base(tmp_path_factory.mktemp("hardening"))


# -- the byte tokenizer of an export is checked -------------------------------------------------------


@pytest.fixture
def exported(base, tmp_path):
    pytest.importorskip("firepe.hf", exc_type=ImportError)
    run, _ = base
    out = tmp_path / "exported"
    assert main(["export", str(run), "--out", str(out)]) == 0
    return out


@pytest.mark.parametrize("damage", ["random bytes", "huge added id", "extra merge", "missing"])
def test_a_damaged_byte_tokenizer_in_an_export_is_refused(exported, capsys, damage):
    file = exported / "tokenizer.json"
    tok = json.loads(file.read_text())
    if damage == "random bytes":
        file.write_bytes(bytes(range(256)) * 4)
    elif damage == "huge added id":
        tok["added_tokens"].append({**tok["added_tokens"][0], "id": 10**9, "content": "<x>"})
        file.write_text(json.dumps(tok))
    elif damage == "extra merge":
        tok["model"]["merges"] = [["a", "b"]]
        file.write_text(json.dumps(tok))
    else:
        file.unlink()
    for argv in (["eval", exported, "--lengths", "96", "--val-tokens", "256", "--no-progress"],
                 ["generate", exported, "--prompt", "a", "--max-new-tokens", "2"]):
        one_line_error(capsys, argv, r"tokenizer\.json")


def test_an_intact_byte_export_still_loads(exported, capsys):
    assert main(["generate", str(exported), "--prompt", "a", "--max-new-tokens", "2"]) == 0


# -- a refused command writes nothing -----------------------------------------------------------------


def test_a_tracker_that_cannot_start_leaves_an_existing_empty_folder_empty(tmp_path, text_corpus, capsys,
                                                                          monkeypatch):
    """(A folder the start created is removed: tests/test_tracking.py.)"""
    def refuse(self, run):
        raise RuntimeError("No API key configured. Use `wandb login` to log in.")

    monkeypatch.setattr(tracking.WandbTracker, "__init__", refuse)
    kept = tmp_path / "kept"
    kept.mkdir()
    one_line_error(capsys, ["train", "--out", kept, "--corpus", text_corpus, *TINY, "--log-to", "wandb"],
                   "could not start")
    assert list(kept.iterdir()) == []


def test_finetune_onto_an_existing_run_does_not_touch_its_lock(base, tmp_path, capsys):
    import shutil

    run, good = base
    other = tmp_path / "other"
    shutil.copytree(run, other)
    (other / ".lock").write_text("12345")
    one_line_error(capsys, ["finetune", run, "--task", f"jsonl:{good}", "--out", other, "--no-progress"],
                   "already holds a run")
    assert (other / ".lock").read_text() == "12345"


# -- library errors are ValueError --------------------------------------------------------------------


@pytest.mark.parametrize("name,opts", [("rope", {}), ("rope_pi", {"factor": 2.0}), ("yarn", {"factor": 2.0}),
                                       ("p_rope", {}), ("longrope", {"factor": 2.0})])
def test_apply_rotary_with_angles_of_the_wrong_shape_is_a_value_error(name, opts):
    enc = positions.build(name, num_heads=2, head_dim=8, **opts)
    q = k = torch.randn(1, 2, 6, 8)
    for pos in (torch.arange(5), torch.arange(7)):
        cos, sin = enc.angles(pos)
        with pytest.raises(ValueError, match=r"cos and sin must both be \[T, D\] = \[6, 8\]"):
            positions.apply_rotary(q, k, cos, sin)
    cos, sin = enc.angles(torch.arange(6))
    with pytest.raises(ValueError, match="cos and sin"):
        positions.apply_rotary(q, k, cos[:, :4], sin[:, :4])
    with pytest.raises(ValueError, match="cos and sin"):
        positions.apply_rotary_one(torch.randn(1, 2, 6, 4), cos, sin)


@pytest.mark.parametrize("name", ["fire", "fire_s", "sandwich"])
def test_a_bias_over_a_span_that_cannot_be_allocated_is_a_value_error(name):
    enc = positions.build(name, num_heads=2, head_dim=8)
    with pytest.raises(ValueError, match="spanning 8,589,934,592 distances does not fit in memory"):
        enc.bias(torch.tensor([2**33]), torch.tensor([0]))


# -- messages -----------------------------------------------------------------------------------------


def test_none_combined_with_a_backend_says_so():
    with pytest.raises(ValueError, match="combines 'none' with backends; pass none alone"):
        config.parse_log_to("none,tensorboard")
    assert config.parse_log_to("none") is None


def test_export_with_an_empty_out_says_it_is_empty(base, capsys):
    run, _ = base
    one_line_error(capsys, ["export", run, "--out", ""], "--out is empty")


def test_warnings_of_a_command_are_one_line_each(tmp_path, text_corpus):
    res = subprocess.run([sys.executable, "-m", "firepe", "train", "--out", str(tmp_path / "r"), "--corpus",
                          str(text_corpus), *TINY, "--steps", "1", "--seq-len", "32", "--attention", "flex"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-1000:]
    warned = [line for line in res.stderr.splitlines() if "warning" in line.lower()]
    assert warned and all(line.startswith("firepe: warning: ") for line in warned), res.stderr
    assert "FlexAttention has no backward on CPU" in res.stderr
    assert "warnings.warn" not in res.stderr and ".py:" not in res.stderr


# -- task files: numbers become text, lists several references (documented) --------------------------


def test_task_file_numbers_and_lists_are_converted_as_documented(tmp_path):
    f = tmp_path / "t.jsonl"
    rows = [{"id": "1", "input": "x", "output": 123}, {"id": "2", "input": 7, "output": ["a", 1]},
            {"id": "3", "input": "y", "output": 0.5}]
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ex = read_jsonl(f)
    assert [(e.id, e.input, e.outputs) for e in ex] == [("1", "x", ("123",)), ("2", "7", ("a", "1")),
                                                         ("3", "y", ("0.5",))]
    for bad in (True, {"a": 1}, [["a"]], [], ""):
        f.write_text(json.dumps({"id": "1", "input": "x", "output": bad}) + "\n")
        with pytest.raises(ValueError, match="line 1"):
            read_jsonl(f)
