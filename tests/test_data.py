import json

import pytest
import torch

from firepe.data import (
    BPETokenizer,
    ByteTokenizer,
    DataConfig,
    TokenData,
    build_tokenizer,
    encode_documents,
    load_corpus,
    stdlib_files,
)


def test_stdlib_corpus_is_deterministic_and_excludes_tests():
    files = stdlib_files()
    assert files == sorted(files) and len(files) > 100
    assert not any(part in ("test", "tests", "pydoc_data", "idle_test", "site-packages")
                   for f in files for part in f.parts[-4:-1])
    a, b = load_corpus(DataConfig()), load_corpus(DataConfig())
    assert len(a.train) == len(b.train) and a.validation == b.validation
    assert 0 < len(a.validation) < len(a.train) / 5


def test_local_folder_split_by_file(text_corpus):
    c = load_corpus(DataConfig(corpus=str(text_corpus), val_percent=20))
    assert len(c.train) + len(c.validation) == 40 and c.validation
    assert not set(c.train) & set(c.validation)


def test_missing_and_empty_corpus(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_corpus(DataConfig(corpus=str(tmp_path / "nope")))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "blank.txt").write_text("   \n")
    with pytest.raises(ValueError, match="no non-empty UTF-8 text"):
        load_corpus(DataConfig(corpus=str(tmp_path / "empty")))
    with pytest.raises(ValueError, match="corpus is empty"):
        load_corpus(DataConfig(corpus=""))


def test_packing_cuts_long_documents():
    tok = ByteTokenizer()
    stream = encode_documents(["a" * 25, "bc"], tok)
    assert stream.tolist() == [97] * 25 + [256] + [98, 99] + [256]
    data = TokenData(stream, seq_len=8)
    assert data.num_sequences == (len(stream) - 1) // 8
    x, y = data.batch(0, 3, seed=0)
    assert x.shape == (3, 8) and torch.equal(x[:, 1:], y[:, :-1])
    # deterministic order, a permutation per epoch covering every sequence
    seen = torch.cat([data.indices(s, 1, seed=1) for s in range(data.num_sequences)])
    assert sorted(seen.tolist()) == list(range(data.num_sequences))
    assert torch.equal(data.indices(5, 2, 1), TokenData(stream, 8).indices(5, 2, 1))


def test_length_too_short():
    with pytest.raises(ValueError, match="at least 2 tokens"):
        TokenData(torch.arange(100), seq_len=1)
    with pytest.raises(ValueError, match="fewer than one sequence"):
        TokenData(torch.arange(5), seq_len=8)


def test_bpe_trained_locally_and_reloaded(tmp_path, text_corpus):
    corpus = load_corpus(DataConfig(corpus=str(text_corpus)))
    tok = build_tokenizer(DataConfig(tokenizer="bpe", bpe_vocab_size=300), corpus)
    assert isinstance(tok, BPETokenizer) and tok.vocab_size <= 300
    ids = tok.encode("def f(x):\n    return x")
    assert tok.decode(ids) == "def f(x):\n    return x"
    tok.save(tmp_path / "tokenizer.json")
    again = build_tokenizer(DataConfig(tokenizer=str(tmp_path / "tokenizer.json")), corpus)
    assert again.encode("class C1:") == tok.encode("class C1:")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="cannot read tokenizer"):
        BPETokenizer.load(tmp_path / "bad.json")


def test_hf_datasets_on_local_files(tmp_path):
    pytest.importorskip("datasets")
    path = tmp_path / "docs.jsonl"
    with open(path, "w") as f:
        for k in range(200):
            f.write(json.dumps({"text": f"document {k} " * 20}) + "\n")
    c = load_corpus(DataConfig(corpus="hf:json", hf_data_files=str(path), max_train_tokens=100_000))
    assert c.train and c.validation and c.train[0].startswith("document")
