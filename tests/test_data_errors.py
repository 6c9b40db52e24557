"""One-sentence ValueErrors for bad data settings, corpora and token input (issue 9)."""

import pytest
import torch

from firepe.config import DataConfig
from firepe.data import BPETokenizer, TokenData, encode_documents, encoded_stream, load_corpus


@pytest.mark.parametrize("kwargs, match", [
    ({"corpus": ""}, "corpus is empty"),
    ({"corpus": ","}, r"corpus is empty \(','\)"),
    ({"corpus": " , "}, "corpus is empty"),
    ({"corpus": 3}, "corpus must be a string"),
    ({"corpus": "hf:"}, "names no dataset"),
    ({"tokenizer": ""}, "unknown tokenizer ''"),
    ({"tokenizer": "gpt2"}, "unknown tokenizer 'gpt2'"),
    ({"bpe_vocab_size": 0}, "bpe_vocab_size must be an integer above 257 .* got 0"),
    ({"bpe_vocab_size": -5}, "got -5"),
    ({"bpe_vocab_size": 257}, "got 257"),
    ({"bpe_vocab_size": True}, "got True"),
    ({"val_percent": 0}, "val_percent must be an integer from 1 to 99, got 0"),
    ({"val_percent": 100}, "got 100"),
    ({"val_percent": 5.0}, "got 5.0"),
    ({"max_train_tokens": 0}, "max_train_tokens must be None or a positive integer, got 0"),
    ({"max_train_tokens": False}, "got False"),
    ({"val_tokens": -1}, "val_tokens must be a positive integer, got -1"),
    ({"val_tokens": "8"}, "got '8'"),
    ({"corpus": "hf:json", "hf_data_files": 3}, "hf_data_files must be None or a string"),
    ({"hf_text_field": ""}, "hf_text_field must be a non-empty string"),
    ({"corpus": "docs.jsonl", "hf_data_files": "docs.jsonl"}, "only read by an 'hf:' corpus"),
])
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DataConfig(**kwargs)


@pytest.mark.parametrize("builder", ["json", "text", "csv", "parquet"])
def test_hf_file_builders_need_data_files(builder, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "stray.json").write_text('{"text": "not meant as a corpus"}\n')
    for files in (None, "", ","):
        with pytest.raises(ValueError, match=f"corpus 'hf:{builder}' needs hf_data_files"):
            DataConfig(corpus=f"hf:{builder}", hf_data_files=files)


def test_hf_data_files_must_exist(tmp_path):
    pytest.importorskip("datasets")
    good = tmp_path / "a.jsonl"
    good.write_text('{"text": "hello"}\n')
    (tmp_path / "folder").mkdir()
    for files, match in ((f"{good},{tmp_path / 'missing.jsonl'}", "file '.*missing.jsonl' does not exist"),
                         (str(tmp_path / "folder"), "is a folder; give files or a glob"),
                         (str(tmp_path / "*.parquet"), r"pattern '.*\*.parquet' matches no file")):
        with pytest.raises(ValueError, match=match):
            load_corpus(DataConfig(corpus="hf:json", hf_data_files=files))


def test_hf_dataset_that_cannot_be_loaded_offline(monkeypatch, tmp_path):
    datasets = pytest.importorskip("datasets")
    import huggingface_hub.constants

    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.setenv(var, "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)  # read at import time
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ValueError, match=r"could not load Hugging Face dataset 'no-such-user/no-such-ds' \("):
        load_corpus(DataConfig(corpus="hf:no-such-user/no-such-ds"))


@pytest.mark.parametrize("error", [ConnectionError("no route"), OSError("disk"), FileNotFoundError("gone")])
def test_hf_load_errors_become_one_line(monkeypatch, error):
    datasets = pytest.importorskip("datasets")

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(datasets, "load_dataset", fail)
    match = rf"could not load Hugging Face dataset 'user/ds:en' \({type(error).__name__}: "
    with pytest.raises(ValueError, match=match):
        load_corpus(DataConfig(corpus="hf:user/ds:en"))


@pytest.mark.parametrize("builder", ["text", "json"])
def test_binary_file_names_the_data_files(builder, tmp_path):
    pytest.importorskip("datasets")
    path = tmp_path / "blob.bin"
    path.write_bytes(bytes(range(256)) * 8)
    with pytest.raises(ValueError, match=rf"could not read the {builder} files .*blob.bin \("):
        load_corpus(DataConfig(corpus=f"hf:{builder}", hf_data_files=str(path)))


def test_hf_non_text_field(tmp_path):
    pytest.importorskip("datasets")
    path = tmp_path / "n.jsonl"
    path.write_text("".join(f'{{"text": "doc {k}", "n": {k + 1}}}\n' for k in range(5)))
    with pytest.raises(ValueError, match="field 'n' of the json files .* holds int, not text"):
        load_corpus(DataConfig(corpus="hf:json", hf_data_files=str(path), hf_text_field="n"))


def test_bpe_refuses_undecodable_text(text_corpus):
    pytest.importorskip("tokenizers")
    tok = BPETokenizer.train(["hello world"] * 20, 300)
    with pytest.raises(ValueError, match=r"undecodable character '\\udcff' at position 2 .*needs valid UTF-8"):
        tok.encode("ab\udcffc")


@pytest.mark.parametrize("max_tokens", [0, -3, True, 2.5])
def test_encode_refuses_bad_max_tokens(max_tokens, tmp_path):
    from firepe.data import ByteTokenizer

    for fn in (encode_documents, lambda *a: encoded_stream(*a, cache_dir=tmp_path)):
        with pytest.raises(ValueError, match="max_tokens must be None or a positive integer"):
            fn(["abc"], ByteTokenizer(), max_tokens)


def test_token_data_refuses_bad_input():
    with pytest.raises(ValueError, match="at least 2 tokens, got 8.0"):
        TokenData(torch.arange(100), seq_len=8.0)
    with pytest.raises(ValueError, match="1-D integer tensor"):
        TokenData(torch.zeros(100), seq_len=8)
    with pytest.raises(ValueError, match="1-D integer tensor"):
        TokenData(torch.zeros(10, 10, dtype=torch.int32), seq_len=8)
