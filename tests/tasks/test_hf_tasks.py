"""SCROLLS / GLUE / SuperGLUE casting (firepe.tasks.hf), offline: local copies in the Hugging Face row
shapes (tests/fixtures/tasks) read through ``datasets.load_dataset(..., data_files=...)``; the hub
path through a stand-in ``load_dataset`` and, once, the real one with the hub switched off."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

datasets = pytest.importorskip("datasets")

from firepe.tasks.hf import GLUE, GROUPS, SCROLLS, SUPER_GLUE, TASK_SPECS, hf_task  # noqa: E402

FIX = Path(__file__).resolve().parent.parent / "fixtures" / "tasks"


@pytest.fixture(autouse=True)
def _datasets_cache(monkeypatch, tmp_path):
    """Arrow caches of the local files under the test's folder, not ~/.cache."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-datasets"))


def fix(name: str) -> str:
    return str(FIX / name)


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg
    return msg


# ---------------------------------------------------------------------------- names and groups

def test_specs_and_groups():
    assert set(SCROLLS) == {"gov_report", "summ_screen_fd", "qmsum", "qasper", "narrative_qa", "quality",
                            "contract_nli"}
    assert GROUPS["scrolls"] == [f"scrolls:{n}" for n in SCROLLS]
    # Table 13 of the paper: GLUE without STS-B, and all seven SuperGLUE tasks
    assert sorted(GROUPS["glue"]) == sorted(f"glue:{t}" for t in ("cola", "sst2", "mrpc", "qqp", "mnli", "qnli",
                                                                   "rte", "wnli"))
    assert sorted(GROUPS["super_glue"]) == sorted(f"super_glue:{t}" for t in ("boolq", "cb", "copa", "multirc",
                                                                               "record", "wic", "wsc"))
    assert "glue:stsb" in TASK_SPECS
    assert len(TASK_SPECS) == 7 + 9 + 7 == len(set(TASK_SPECS))
    for members in GROUPS.values():
        assert set(members) <= set(TASK_SPECS)


def test_label_names_are_the_hf_classlabel_names():
    expected = {"cola": ("unacceptable", "acceptable"), "sst2": ("negative", "positive"),
                "mrpc": ("not_equivalent", "equivalent"), "qqp": ("not_duplicate", "duplicate"),
                "mnli": ("entailment", "neutral", "contradiction"), "qnli": ("entailment", "not_entailment"),
                "rte": ("entailment", "not_entailment"), "wnli": ("not_entailment", "entailment"), "stsb": None}
    assert {t: c.labels for t, c in GLUE.items()} == expected
    expected = {"boolq": ("False", "True"), "cb": ("entailment", "contradiction", "neutral"),
                "copa": ("choice1", "choice2"), "multirc": ("False", "True"), "wic": ("False", "True"),
                "wsc": ("False", "True"), "record": None}
    assert {t: c.labels for t, c in SUPER_GLUE.items()} == expected


@pytest.mark.parametrize("spec", ["glue:foo", "scrolls:arxiv", "superglue:boolq", "glue", "glue:", "cola", ""])
def test_unknown_task_lists_the_valid_ones(spec):
    with pytest.raises(ValueError) as err:
        hf_task(spec, "validation")
    msg = one_line(err)
    assert f"unknown task {spec!r}" in msg and "glue:cola" in msg and "scrolls:narrative_qa" in msg


def test_unknown_hub_split_is_refused_before_loading(monkeypatch):
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("must not load"))
    with pytest.raises(ValueError, match=r"unknown split 'dev' for task glue:cola; valid: train, validation, test"):
        hf_task("glue:cola", "dev")
    with pytest.raises(ValueError, match="valid: train, validation_matched, validation_mismatched"):
        hf_task("glue:mnli", "dev")


# ---------------------------------------------------------------------------- SCROLLS

def test_scrolls_narrative_qa_merges_references():
    task = hf_task("scrolls:narrative_qa", "validation", data_files=fix("scrolls_narrative_qa.jsonl"))
    assert task.name == "scrolls:narrative_qa" and task.metric == "f1" and task.metrics == ("f1",)
    assert task.labels is None
    assert [ex.id for ex in task.examples] == ["nqa-001", "nqa-002"]
    first = task.examples[0]
    assert first.outputs == ("Mara", "The young woman Mara.")
    assert first.input.startswith("Who finds the lighthouse keeper's log?\n\nThe storm")
    assert first.question == ""
    assert task.examples[1].outputs == ("Three nights.",)


def test_scrolls_gov_report_is_scored_with_rouge():
    task = hf_task("scrolls:gov_report", "validation", data_files=fix("scrolls_gov_report.jsonl"))
    assert task.metric == "rgm"
    assert [ex.id for ex in task.examples] == ["GAO_GAO-21-001", "CRS_R40001"]
    assert task.examples[1].outputs == ("The report reviews rural broadband grants and their funding from 2015 to "
                                        "2020.",)


def test_scrolls_limit_keeps_every_reference_of_the_kept_ids():
    task = hf_task("scrolls:narrative_qa", "validation", data_files=fix("scrolls_narrative_qa.jsonl"), limit=1)
    assert len(task.examples) == 1 and len(task.examples[0].outputs) == 2


def test_scrolls_test_split_without_outputs(tmp_path):
    path = write_jsonl(tmp_path / "test.jsonl", [{"id": "a", "pid": "a_0", "input": "Q?\n\nDoc.", "output": ""}])
    with pytest.raises(ValueError) as err:
        hf_task("scrolls:qasper", "test", data_files=path)
    assert one_line(err).startswith("scrolls:qasper (files ") and "has no labels (" in str(err.value)
    assert "row 1 has an empty output" in str(err.value) and str(err.value).endswith("pass a labeled copy (the train "
                                                                                      "or validation split).")


def test_scrolls_missing_field(tmp_path):
    path = write_jsonl(tmp_path / "v.jsonl", [{"id": "a", "pid": "a_0", "input": "x", "output": "y"},
                                              {"id": "b", "pid": "b_0", "output": "y"}])
    with pytest.raises(ValueError, match=r"row 2 has no field 'input' \(SCROLLS rows need id, pid, input, output\)"):
        hf_task("scrolls:quality", "validation", data_files=path)


# ---------------------------------------------------------------------------- GLUE

def test_mrpc_int_labels_become_names():
    task = hf_task("glue:mrpc", "validation", data_files=fix("glue_mrpc.jsonl"))
    assert task.metric == "accuracy" and task.metrics == ("accuracy", "f1_binary:equivalent")
    assert task.labels == ("not_equivalent", "equivalent")
    assert [ex.id for ex in task.examples] == ["0", "1", "2"]
    assert [ex.outputs for ex in task.examples] == [("equivalent",), ("not_equivalent",), ("equivalent",)]
    assert task.examples[2].input == ("mrpc sentence1: They had published an advertisement on the Internet on June "
                                      "10 . sentence2: On June 10 , the ship 's owners had published an advertisement "
                                      "on the Internet .")
    assert task.examples[2].question == "" and task.examples[2].group is None


def test_stsb_rounds_to_a_fifth_ties_to_even():
    task = hf_task("glue:stsb", "validation", data_files=fix("glue_stsb.jsonl"))
    assert task.labels is None and task.metrics == ("accuracy", "pearson", "spearman")
    # 5.0 -> 25/5; 3.8 -> 19/5; 4.75 -> 23.75 -> 24/5 = 4.8; 2.5 -> 12.5 -> 12 (even) /5 = 2.4; 0.1 -> 0.5 -> 0
    assert [ex.outputs[0] for ex in task.examples] == ["5.0", "3.8", "4.8", "2.4", "0.0"]
    assert task.examples[0].input == "stsb sentence1: A plane is taking off. sentence2: An air plane is taking off."


@pytest.mark.parametrize("label, valid", [(-3, None), (7.5, None), ("high", None)])
def test_stsb_bad_label(tmp_path, label, valid):
    path = write_jsonl(tmp_path / "s.jsonl", [{"sentence1": "a", "sentence2": "b", "label": label, "idx": 0}])
    with pytest.raises(ValueError, match=r"row 1: label .* (is outside the STS-B scale|is not a similarity)"):
        hf_task("glue:stsb", "validation", data_files=path)


def test_label_outside_the_set_names_the_row_and_the_labels():
    with pytest.raises(ValueError) as err:
        hf_task("glue:cola", "validation", data_files=fix("glue_cola_bad_label.jsonl"))
    msg = one_line(err)
    assert "row 2: label 2 is outside the label set of glue:cola (0=unacceptable, 1=acceptable)" in msg


def test_string_labels_are_accepted_and_checked(tmp_path):
    rows = [{"sentence": "ok", "label": "acceptable", "idx": 0}, {"sentence": "bad", "label": "unacceptable", "idx": 1}]
    task = hf_task("glue:cola", "validation", data_files=write_jsonl(tmp_path / "c.jsonl", rows))
    assert [ex.outputs for ex in task.examples] == [("acceptable",), ("unacceptable",)]
    assert task.metrics == ("accuracy", "mcc")
    rows[1]["label"] = "grammatical"
    with pytest.raises(ValueError, match=r"row 2: label 'grammatical' is outside the label set of glue:cola"):
        hf_task("glue:cola", "validation", data_files=write_jsonl(tmp_path / "c2.jsonl", rows))


@pytest.mark.parametrize("spec", ["glue:cola", "glue:mnli"])
def test_unlabeled_test_split(tmp_path, spec):
    rows = ([{"sentence": "x", "label": -1, "idx": 0}] if spec == "glue:cola"
            else [{"premise": "p", "hypothesis": "h", "label": -1, "idx": 0}])
    with pytest.raises(ValueError) as err:
        hf_task(spec, "test", data_files=write_jsonl(tmp_path / "t.jsonl", rows))
    msg = one_line(err)
    assert msg.startswith(f"{spec} (files ") and "has no labels (" in msg and "row 1 has label -1" in msg
    assert msg.endswith("pass a labeled copy (the train or validation split).")


def test_missing_field_names_row_and_field(tmp_path):
    rows = [{"sentence1": "a", "sentence2": "b", "label": 0, "idx": 0}, {"sentence1": "a", "label": 0, "idx": 1}]
    with pytest.raises(ValueError) as err:
        hf_task("glue:rte", "validation", data_files=write_jsonl(tmp_path / "r.jsonl", rows))
    assert "row 2 has no field 'sentence2' (rte rows need sentence1, sentence2, label)" in one_line(err)


def test_missing_label(tmp_path):
    path = write_jsonl(tmp_path / "s.jsonl", [{"sentence": "fine", "idx": 0}])
    with pytest.raises(ValueError, match=r"row 1 has no field 'label'"):
        hf_task("glue:sst2", "validation", data_files=path)


@pytest.mark.parametrize("spec, row, text", [
    ("glue:mnli", {"premise": "P.", "hypothesis": "H.", "label": 2}, "mnli hypothesis: H. premise: P."),
    ("glue:qnli", {"question": "Q?", "sentence": "S.", "label": 1}, "qnli question: Q? sentence: S."),
    ("glue:qqp", {"question1": "A?", "question2": "B?", "label": 1}, "qqp question1: A? question2: B?"),
    ("glue:sst2", {"sentence": "great film", "label": 1}, "sst2 sentence: great film"),
    ("super_glue:cb", {"premise": "P.", "hypothesis": "H.", "label": 1}, "cb hypothesis: H. premise: P."),
    ("super_glue:copa", {"premise": "It rained.", "choice1": "Wet.", "choice2": "Dry.", "question": "effect",
                         "label": 0}, "copa choice1: Wet. choice2: Dry. premise: It rained. question: effect"),
    ("super_glue:wic", {"word": "bank", "sentence1": "A river bank.", "sentence2": "A bank loan.", "start1": 8,
                        "end1": 12, "start2": 2, "end2": 6, "label": 0},
     "wic sentence1: A river bank. sentence2: A bank loan. word: bank"),
])
def test_t5_field_order(tmp_path, spec, row, text):
    task = hf_task(spec, "validation", data_files=write_jsonl(tmp_path / "x.jsonl", [dict(row, idx=7)]))
    ex = task.examples[0]
    assert ex.input == text and ex.question == "" and ex.id == "7"
    assert ex.outputs == (task.labels[row["label"]],)


def test_boolq_question_is_kept_out_of_the_truncated_input(tmp_path):
    rows = [{"question": "is the sky blue", "passage": "The sky is blue by day.", "label": True, "idx": 0},
            {"question": "is it night", "passage": "The sun is up.", "label": 0, "idx": 1}]
    task = hf_task("super_glue:boolq", "validation", data_files=write_jsonl(tmp_path / "b.jsonl", rows))
    ex = task.examples[0]
    assert ex.input == "boolq passage: The sky is blue by day."
    assert ex.question == " question: is the sky blue"
    assert ex.input + ex.question == "boolq passage: The sky is blue by day. question: is the sky blue"  # T5's text
    assert [e.outputs for e in task.examples] == [("True",), ("False",)]


def test_wsc_marks_the_noun_and_the_pronoun(tmp_path):
    text = "Mark told Pete many lies about himself , which Pete included in his book ."
    rows = [{"text": text, "span1_index": 2, "span1_text": "Pete", "span2_index": 12, "span2_text": "his",
             "label": 1, "idx": 0},
            {"text": "The trophy does not fit into the suitcase because it is too small .", "span1_index": 6,
             "span1_text": "the suitcase", "span2_index": 9, "span2_text": "it", "label": 1, "idx": 1},
            {"text": "He said that Tom was late .", "span1_index": 3, "span1_text": "Tom", "span2_index": 0,
             "span2_text": "He", "label": 0, "idx": 2}]
    task = hf_task("super_glue:wsc", "validation", data_files=write_jsonl(tmp_path / "w.jsonl", rows))
    assert [ex.input for ex in task.examples] == [
        "wsc text: Mark told * Pete * many lies about himself , which Pete included in # his # book .",
        "wsc text: The trophy does not fit into * the suitcase * because # it # is too small .",
        "wsc text: # He # said that * Tom * was late .",  # pronoun first: no shift of its index
    ]
    assert [ex.outputs for ex in task.examples] == [("True",), ("True",), ("False",)]


# ---------------------------------------------------------------------------- SuperGLUE special casts

def test_multirc_options_grouped_by_question():
    task = hf_task("super_glue:multirc", "validation", data_files=fix("super_glue_multirc.jsonl"))
    assert task.metric == "multirc_em" and task.metrics == ("multirc_em", "multirc_f1a")
    assert task.labels == ("False", "True")
    assert [ex.id for ex in task.examples] == ["0-0-0", "0-0-1", "0-1-0"]
    assert [ex.group for ex in task.examples] == ["0-0", "0-0", "0-1"]
    assert [ex.outputs for ex in task.examples] == [("True",), ("False",), ("True",)]
    # T5: question, answer, paragraph; <br> -> space, <b> and </b> removed
    assert task.examples[0].input == ("multirc question: Who got bread? answer: Ana paragraph: Sent 1: Sam baked bread "
                                      "on Sunday. Sent 2: He gave half of it to Ana. ")


def test_multirc_limit_keeps_whole_questions():
    task = hf_task("super_glue:multirc", "validation", data_files=fix("super_glue_multirc.jsonl"), limit=1)
    assert [ex.id for ex in task.examples] == ["0-0-0", "0-0-1"]


def test_multirc_needs_idx(tmp_path):
    rows = [{"paragraph": "p", "question": "q", "answer": "a", "label": 1}]
    with pytest.raises(ValueError, match=r"row 1 has no field 'idx' \(multirc rows need question, answer, paragraph, "
                                         r"idx, label\)"):
        hf_task("super_glue:multirc", "validation", data_files=write_jsonl(tmp_path / "m.jsonl", rows))


def test_record_answers_are_references():
    task = hf_task("super_glue:record", "validation", data_files=fix("super_glue_record.jsonl"))
    assert task.labels is None and task.metric == "em" and task.metrics == ("em", "f1")
    assert [ex.id for ex in task.examples] == ["0-0", "1-0"]
    assert task.examples[0].outputs == ("NASA",)  # the repeated answer once
    assert task.examples[1].outputs == ("Curiosity", "The Curiosity rover")
    assert task.examples[0].input == (
        "record query: Scientists at @placeholder studied the rocks. entities: Mars, Curiosity, Gale Crater, NASA "
        "passage: The Mars rover Curiosity found new rocks near Gale Crater, NASA said. Curiosity found rocks near "
        "Gale Crater. NASA is \"thrilled\" The rover landed in 2012")


def test_record_without_answers_is_unlabeled(tmp_path):
    rows = [{"passage": "p", "query": "@placeholder q", "entities": ["p"], "answers": [],
             "idx": {"passage": 0, "query": 0}}]
    with pytest.raises(ValueError, match=r"super_glue:record \(files .* has no labels \(.*row 1 has no answers"):
        hf_task("super_glue:record", "test", data_files=write_jsonl(tmp_path / "r.jsonl", rows))


# ---------------------------------------------------------------------------- loading

def test_local_files_go_through_datasets_load_dataset(monkeypatch):
    calls = []
    real = datasets.load_dataset

    def spy(*args, **kwargs):
        calls.append((args, kwargs))
        return real(*args, **kwargs)

    monkeypatch.setattr(datasets, "load_dataset", spy)
    hf_task("glue:mrpc", "validation", data_files=fix("glue_mrpc.jsonl"))
    assert calls == [(("json",), {"data_files": [fix("glue_mrpc.jsonl")], "split": "train"})]


def test_parquet_and_csv_copies_read_like_jsonl(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    rows = [json.loads(line) for line in Path(fix("glue_mrpc.jsonl")).read_text().splitlines()]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "mrpc.parquet")
    want = hf_task("glue:mrpc", "validation", data_files=fix("glue_mrpc.jsonl")).examples
    assert hf_task("glue:mrpc", "validation", data_files=str(tmp_path / "mrpc.parquet")).examples == want
    (tmp_path / "sst2.csv").write_text("sentence,label,idx\n\"a fine, quiet film\",1,0\nawful,0,1\n")
    task = hf_task("glue:sst2", "validation", data_files=str(tmp_path / "sst2.csv"))
    assert [(ex.input, ex.outputs) for ex in task.examples] == [("sst2 sentence: a fine, quiet film", ("positive",)),
                                                               ("sst2 sentence: awful", ("negative",))]


def test_several_files_and_limit(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [{"sentence": "x", "label": 1, "idx": 0}])
    b = write_jsonl(tmp_path / "b.jsonl", [{"sentence": "y", "label": 0, "idx": 1},
                                           {"sentence": "z", "label": 0, "idx": 2}])
    task = hf_task("glue:cola", "train", data_files=f"{a},{b}")
    assert [ex.id for ex in task.examples] == ["0", "1", "2"]
    assert [ex.id for ex in hf_task("glue:cola", "train", data_files=f"{a},{b}", limit=2).examples] == ["0", "1"]
    with pytest.raises(ValueError, match=r"limit must be a positive integer, got 0"):
        hf_task("glue:cola", "train", data_files=a, limit=0)


@pytest.mark.parametrize("files, match", [
    ("{tmp}/missing.jsonl", r"data_files file '.*missing.jsonl' does not exist"),
    ("{tmp}/notes.txt", r"data_files item '.*notes.txt' is not .jsonl, .json, .parquet or .csv"),
    ("{tmp}/a.jsonl,{tmp}/b.csv", r"data_files mix formats \(csv, json\)"),
    ("{tmp}", r"is a folder"),
    ("{tmp}/*.parquet", r"pattern '.*\*.parquet' matches no file"),
    (" , ", r"data_files is empty"),
])
def test_data_files_errors(tmp_path, files, match):
    for name in ("notes.txt", "a.jsonl", "b.csv"):
        (tmp_path / name).write_text("")
    with pytest.raises(ValueError, match=match):
        hf_task("glue:cola", "validation", data_files=files.format(tmp=tmp_path))


def test_hub_names_configs_and_splits(monkeypatch):
    calls = []
    rows = {"mnli": {"premise": "p", "hypothesis": "h", "label": 1, "idx": 0},
            "wsc.fixed": {"text": "He ran .", "span1_index": 0, "span1_text": "He", "span2_index": 0,
                          "span2_text": "He", "label": 0, "idx": 0}}

    def fake(name, config, split):
        calls.append((name, config, split))
        return [rows[config]]

    monkeypatch.setattr(datasets, "load_dataset", fake)
    task = hf_task("glue:mnli", "validation")
    assert task.examples[0].outputs == ("neutral",) and task.extra["split"] == "validation_matched"
    hf_task("super_glue:wsc", "train")
    assert calls == [("nyu-mll/glue", "mnli", "validation_matched"), ("aps/super_glue", "wsc.fixed", "train")]


def test_scrolls_hub_reads_the_split_from_the_repository_zip(monkeypatch, tmp_path):
    """tau/scrolls is a loading script (not run by datasets >= 4): its <name>.zip holds <name>/<split>.jsonl."""
    import zipfile

    import huggingface_hub

    archive = tmp_path / "narrative_qa.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.write(fix("scrolls_narrative_qa.jsonl"), "narrative_qa/validation.jsonl")
        z.writestr("narrative_qa/train.jsonl", '{"id": "t", "pid": "t_0", "input": "Q?", "output": "A"}\n')
    downloads, loads = [], []
    real = datasets.load_dataset

    def download(repo_id, filename, **kwargs):
        downloads.append((repo_id, filename, kwargs))
        return str(archive)

    def spy(*args, **kwargs):
        loads.append((args, kwargs))
        return real(*args, **kwargs)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    monkeypatch.setattr(datasets, "load_dataset", spy)
    task = hf_task("scrolls:narrative_qa", "validation")
    assert downloads == [("tau/scrolls", "narrative_qa.zip", {"repo_type": "dataset"})]
    assert loads == [(("json",), {"data_files": {"validation": f"zip://narrative_qa/validation.jsonl::{archive}"},
                                  "split": "validation"})]
    assert [ex.outputs for ex in task.examples] == [("Mara", "The young woman Mara."), ("Three nights.",)]
    assert task.extra["dataset"] == "tau/scrolls" and task.extra["config"] == "narrative_qa"


@pytest.mark.parametrize("error", [ConnectionError("Couldn't reach 'nyu-mll/glue' on the Hub (OfflineModeIsEnabled)"),
                                   OSError("disk\nfull")])
def test_hub_errors_are_one_line(monkeypatch, error):
    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(datasets, "load_dataset", fail)
    with pytest.raises(ValueError) as err:
        hf_task("glue:rte", "validation")
    msg = one_line(err)
    assert msg.startswith(f"could not load Hugging Face dataset 'nyu-mll/glue' (config 'rte', split 'validation') for "
                          f"task glue:rte ({type(error).__name__}: ")
    assert "data_files" in msg and "HF_DATASETS_OFFLINE" in msg


def test_hub_offline_fails_fast_in_one_line(monkeypatch, tmp_path):
    import huggingface_hub.constants

    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.setenv(var, "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    # both libraries read these at import time: set the imported values too
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    for spec, name in (("super_glue:boolq", "aps/super_glue"), ("scrolls:gov_report", "tau/scrolls")):
        start = time.monotonic()
        with pytest.raises(ValueError) as err:
            hf_task(spec, "validation")
        assert time.monotonic() - start < 60
        config = spec.split(":")[1]
        assert one_line(err).startswith(f"could not load Hugging Face dataset {name!r} (config {config!r}")


def test_without_the_datasets_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    with pytest.raises(ValueError, match=r"^task glue:cola needs the datasets package: pip install 'firepe\[tasks\]'"):
        hf_task("glue:cola", "validation")
