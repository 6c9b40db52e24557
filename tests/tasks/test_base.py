"""Task files in the SCROLLS format, grouping of references and truncation of long inputs."""

import json

import pytest

from firepe.data import ByteTokenizer
from firepe.tasks import ANSWER_PREFIX, Example, Task, expand_tasks, load_task, prepare, read_jsonl, read_parquet

TOK = ByteTokenizer()


def _write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_rows_with_one_id_are_references(tmp_path):
    f = _write(tmp_path / "t.jsonl", [{"id": "a", "input": "q1", "output": "x"}, "",
                                      {"id": "b", "input": "q2", "output": ["y", "z"]},
                                      {"id": "a", "input": "q1", "output": "w"}])
    ex = read_jsonl(f)
    assert [e.id for e in ex] == ["a", "b"]
    assert ex[0].outputs == ("x", "w") and ex[1].outputs == ("y", "z")


@pytest.mark.parametrize("rows,match", [
    ([{"id": "a", "input": "x"}], r"line 1 has no 'output'"),
    ([{"id": "a", "input": "x", "output": "y"}, {"input": "x", "output": "y"}], r"line 2 has no 'id'"),
    (["{not json"], r"line 1 is not valid JSON"),
    ([[1, 2]], r"line 1 is not an object"),
    ([{"id": "a", "input": "x", "output": "y"}, {"id": "a", "input": "other", "output": "y"}], "another input"),
    ([{"id": "a", "input": " ", "output": "y"}], "empty input"),
    ([{"id": "a", "input": "x", "output": []}], "empty list"),
    ([{"id": "a", "input": {"k": 1}, "output": "y"}], "must be a string"),
    ([], "holds no examples"),
])
def test_bad_jsonl_names_the_line(tmp_path, rows, match):
    with pytest.raises(ValueError, match=match):
        read_jsonl(_write(tmp_path / "t.jsonl", rows))


def test_missing_and_binary_files(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        read_jsonl(tmp_path / "nope.jsonl")
    (tmp_path / "b.jsonl").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ValueError, match="not UTF-8"):
        read_jsonl(tmp_path / "b.jsonl")
    with pytest.raises(ValueError, match="not a readable Parquet"):
        read_parquet(_write(tmp_path / "c.parquet", ["garbage"]))


def test_parquet_roundtrip(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": ["1", "1", "2"], "input": ["a", "a", "b"], "output": ["x", "y", "z"]}),
                   tmp_path / "t.parquet")
    ex = read_parquet(tmp_path / "t.parquet")
    assert [(e.id, e.outputs) for e in ex] == [("1", ("x", "y")), ("2", ("z",))]
    pq.write_table(pa.table({"id": ["1"], "text": ["a"]}), tmp_path / "u.parquet")
    with pytest.raises(ValueError, match="no column 'input', 'output'"):
        read_parquet(tmp_path / "u.parquet")


def test_truncation_cuts_the_input_end_never_question_or_answer():
    ex = Example("e", "QUERY" + "d" * 100, ("ans",), question="?Q")
    (p,) = prepare([ex], TOK, 40)
    text = TOK.decode(p.prompt)
    assert len(p.prompt) == 40
    assert text.startswith("QUERY") and text.endswith("?Q" + ANSWER_PREFIX)
    assert p.truncated == 105 - (40 - 2 - len(ANSWER_PREFIX))
    (t,) = prepare([ex], TOK, 40, for_training=True)
    assert len(t.prompt) + len(t.answer) == 41 and TOK.decode(t.answer[:-1]) == "ans"
    (short,) = prepare([Example("s", "hi", ("a",))], TOK, 40)
    assert short.truncated == 0 and TOK.decode(short.prompt) == "hi" + ANSWER_PREFIX


def test_answer_longer_than_the_length_is_an_error():
    with pytest.raises(ValueError, match="example 'e' does not fit length 12"):
        prepare([Example("e", "x", ("a" * 20,))], TOK, 12, for_training=True, task="t")
    with pytest.raises(ValueError, match="does not fit"):
        prepare([Example("e", "x", ("a",), question="q" * 20)], TOK, 12)


def test_task_label_set_and_empty():
    with pytest.raises(ValueError, match="label 'maybe', outside the label set yes, no"):
        Task("t", [Example("1", "x", ("maybe",))], metric="accuracy", labels=("yes", "no"))
    with pytest.raises(ValueError, match="no examples"):
        Task("t", [])


def test_expand_tasks_and_unknown(tmp_path):
    assert expand_tasks("passkey") == ["passkey"]
    assert len(expand_tasks("scrolls")) == 7
    assert "glue:cola" in expand_tasks("glue") and "super_glue:record" in expand_tasks("super_glue")
    for bad, match in (("", "empty"), ("squad", "unknown task 'squad'; valid: passkey"), ("glue,", "empty entry"),
                       ("jsonl:", "names no file"), ("glue:cola,glue", "twice"), ("passkey,glue:cola", "alone")):
        with pytest.raises(ValueError, match=match):
            expand_tasks(bad)
    f = _write(tmp_path / "t.jsonl", [{"id": str(i), "input": "x", "output": "y"} for i in range(5)])
    task = load_task(f"jsonl:{f}", "validation", limit=2, metric="em")
    assert len(task.examples) == 2 and task.metric == "em"
