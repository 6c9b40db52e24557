"""firepe.config: one resume rule, one diff, one type-hint reader, paths made absolute by the configs."""

import json
import os
from dataclasses import fields

import pytest

from firepe import hints
from firepe.config import (
    RESUMABLE,
    DataConfig,
    GPTConfig,
    TrainConfig,
    check_fields,
    config_diff,
    dataclass_from_dict,
    resume_changes,
)
from firepe.positions import training_options


def test_resumable_names_only_train_fields_and_not_what_defines_a_run():
    names = {f.name for f in fields(TrainConfig)}
    assert set(RESUMABLE) <= names
    for fixed in ("seq_len", "batch_size", "lr", "seed", "random_positions", "warmup_steps", "precision"):
        assert fixed not in RESUMABLE


def test_config_diff_lists_changed_fields_in_field_order():
    a, b = TrainConfig(), TrainConfig(lr=0.5, seed=3, steps=7)
    assert config_diff(a, b) == ["steps", "lr", "seed"]
    assert config_diff(a, TrainConfig()) == []
    assert config_diff(GPTConfig(), GPTConfig(n_layer=2)) == ["n_layer"]
    with pytest.raises(TypeError, match="one type"):
        config_diff(GPTConfig(), TrainConfig())


def test_resume_changes_splits_allowed_from_refused():
    saved = TrainConfig(steps=10, lr=1e-3)
    allowed, refused = resume_changes(saved, {"steps": 20, "lr": 1e-3, "seed": 5, "log_every": 10, "nosuch": 1})
    assert allowed == {"steps": 20}  # lr and log_every equal the saved values: no change
    assert refused == {"seed": (0, 5), "nosuch": (None, 1)}
    every = {name: getattr(TrainConfig(), name) for name in RESUMABLE}
    assert resume_changes(TrainConfig(), every) == ({}, {})


def test_trainer_compare_and_cli_share_the_rule(tmp_path):
    """The three users of the rule: each refuses lr and accepts steps (their own tests cover the details)."""
    from firepe.experiment import check_same_settings
    from firepe.runs import RunFolder
    from firepe.train import Trainer

    corpus = tmp_path / "c.txt"
    corpus.write_text("hello world, " * 400)
    model = GPTConfig(vocab_size=257, n_layer=1, n_head=2, d_model=16, position="nope")
    train = TrainConfig(seq_len=16, batch_size=2, steps=1, log_every=1, checkpoint_every=1, progress=False)
    Trainer(tmp_path / "r", model, train, DataConfig(corpus=str(corpus), val_tokens=64)).fit()
    run = RunFolder(tmp_path / "r")
    check_same_settings(run, model, TrainConfig(**{**train.__dict__, "steps": 5}), DataConfig(corpus=str(corpus),
                                                                                                val_tokens=64))
    with pytest.raises(ValueError, match=r"train.lr \(0.001 != 0.5\)"):
        check_same_settings(run, model, TrainConfig(**{**train.__dict__, "lr": 0.5}),
                            DataConfig(corpus=str(corpus), val_tokens=64))
    with pytest.raises(ValueError, match="lr cannot change"):
        Trainer(tmp_path / "r", resume=True, changes={"lr": 0.5})
    again = Trainer(tmp_path / "r", resume=True, changes={"lr": train.lr, "steps": 2})  # an unchanged lr is no change
    assert again.cfg.lr == train.lr and again.cfg.steps == 2
    again.run.unlock()


def test_compare_reuses_a_run_that_stored_a_relative_corpus(tmp_path, monkeypatch):
    """Runs written before configs resolved their paths hold relative ones; both sides are resolved."""
    from firepe.experiment import check_same_settings
    from firepe.runs import RunFolder
    from firepe.train import Trainer

    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.txt").write_text("hello world, " * 400)
    model = GPTConfig(vocab_size=257, n_layer=1, n_head=2, d_model=16, position="nope")
    train = TrainConfig(seq_len=16, batch_size=2, steps=1, log_every=1, checkpoint_every=1, progress=False)
    Trainer("r", model, train, DataConfig(corpus="c.txt", val_tokens=64)).fit()
    cfg = json.loads((tmp_path / "r" / "config.json").read_text())
    cfg["data"]["corpus"] = "c.txt"  # as an older version stored it
    (tmp_path / "r" / "config.json").write_text(json.dumps(cfg))
    check_same_settings(RunFolder(tmp_path / "r"), model, train, DataConfig(corpus="c.txt", val_tokens=64))


def test_a_library_run_stores_absolute_paths(tmp_path, monkeypatch):
    """DataConfig.resolved: what the CLI stored, a Python caller of Trainer now stores too."""
    from firepe.train import Trainer

    (tmp_path / "c.txt").write_text("some text to train on. " * 300)
    monkeypatch.chdir(tmp_path)
    model = GPTConfig(vocab_size=257, n_layer=1, n_head=2, d_model=16, position="nope")
    train = TrainConfig(seq_len=16, batch_size=2, steps=1, log_every=1, checkpoint_every=1, progress=False)
    Trainer("r", model, train, DataConfig(corpus="c.txt", val_tokens=64)).fit()
    saved = json.loads((tmp_path / "r" / "config.json").read_text())["data"]
    assert saved["corpus"] == str(tmp_path / "c.txt")
    cfg = DataConfig(corpus="a,b", tokenizer="tok.json", hf_data_files=None)
    assert cfg.resolved().corpus == f"{tmp_path / 'a'},{tmp_path / 'b'}"
    assert cfg.resolved().tokenizer == str(tmp_path / "tok.json")
    assert DataConfig(corpus="stdlib").resolved() == DataConfig(corpus="stdlib")
    hub = DataConfig(corpus="hf:json", hf_data_files="data/*.json")  # not existing files: a glob, left as given
    assert hub.resolved().hf_data_files == "data/*.json"
    (tmp_path / "x.json").write_text("{}")
    assert DataConfig(corpus="hf:json", hf_data_files="x.json").resolved().hf_data_files == str(tmp_path / "x.json")
    assert os.path.isabs(DataConfig(corpus="c.txt").resolved().corpus)


def test_finetune_config_resolved(tmp_path, monkeypatch):
    from firepe.finetune import FinetuneConfig

    monkeypatch.chdir(tmp_path)
    ft = FinetuneConfig(task="jsonl:a.jsonl,parquet:b.parquet").resolved()
    assert ft.task == f"jsonl:{tmp_path / 'a.jsonl'},parquet:{tmp_path / 'b.parquet'}"
    assert FinetuneConfig(task="passkey").resolved().task == "passkey"
    ft = FinetuneConfig(task="scrolls:qasper", task_files="q/*.json").resolved()
    assert ft.task_files == str(tmp_path / "q" / "*.json")


def test_one_type_hint_reader():
    assert hints.split_optional(int | None) == (int, True) and hints.split_optional(int) == (int, False)
    assert hints.fits(3, int) and not hints.fits(True, int) and not hints.fits(3.0, int)
    assert hints.fits(3, float) and hints.fits(float("nan"), float) and not hints.fits(float("nan"), float, finite=True)
    assert hints.fits(None, int | None) and not hints.fits(None, int)
    assert hints.fits([1.0, 2], tuple[float, float]) and not hints.fits(["a"], tuple[float, float])
    assert not hints.fits("ab", list[str]) and hints.fits({}, dict[str, int])
    assert hints.describe(int | None) == "an integer or null"
    assert hints.describe(bool | None, "spec") == "a bool (true/false/1/0/yes/no) or none"
    assert hints.describe(float, "python") == "a number"
    with pytest.raises(ValueError, match="lr must be a finite number, got nan"):
        check_fields(TrainConfig, {"lr": float("nan")}, "x")
    with pytest.raises(ValueError, match=r"where: n_layer must be an integer, got '2'"):
        dataclass_from_dict(GPTConfig, {"n_layer": "2"}, "where")


def test_training_defaults_live_with_the_encodings():
    from firepe.positions import FIRE, NoPE, T5Bias

    assert FIRE.training_defaults({}, 256) == {"init_L": 64.0, "bias_mode": "table"}
    assert FIRE.training_defaults({"threshold": False}, 256) == {"bias_mode": "table"}
    assert T5Bias.training_defaults({}, 256) == {"num_buckets": 64}
    assert NoPE.training_defaults({}, 256) == {}
    assert training_options("fire", {"init_L": 3.0}, 256) == {"init_L": 3.0, "bias_mode": "table"}  # given wins
    assert training_options("fire_s", {}, 2048)["init_L"] == 512.0
    assert training_options("t5", {"num_buckets": 8}, 256) == {"num_buckets": 8}
