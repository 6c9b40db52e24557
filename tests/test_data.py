import json
import zlib

import pytest
import torch

from firepe.config import DataConfig
from firepe.data import (
    BPETokenizer,
    ByteTokenizer,
    TokenData,
    build_tokenizer,
    encode_documents,
    encoded_stream,
    load_corpus,
    stdlib_files,
    token_cache_dir,
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
    assert c.train and c.validation and c.train[0].startswith("document") and c.split == "by document"


def test_local_folder_split_by_file_is_unchanged(text_corpus):
    """The 40-file fixture keeps the crc32 by-file split (compare numbers depend on it)."""
    c = load_corpus(DataConfig(corpus=str(text_corpus)))
    val = sorted(f for f in text_corpus.iterdir() if zlib.crc32(f.name.encode()) % 100 < 5)
    assert c.split == "by file" and c.validation == [f.read_text() for f in val]
    assert len(c.train) == 40 - len(val) and "split by file" in c.describe()


def test_single_file_split_within_the_file(tmp_path):
    lines = [f"line {k}: {'x' * (k % 7)}\n" for k in range(200)]
    path = tmp_path / "one.txt"
    path.write_text("".join(lines))
    c = load_corpus(DataConfig(corpus=str(path), val_percent=10))
    assert c.split == "within files" and "split within files" in c.describe()
    (train,), (val,) = c.train, c.validation
    assert train + val == path.read_text()
    assert train.endswith("\n") and val.startswith("line ")  # cut between whole lines
    val_lines = val.splitlines()
    assert 0.08 < len(val) / len(train + val) < 0.12 and not set(val_lines) & set(train.splitlines())


def test_few_files_split_within_each_file(tmp_path):
    # both names hash to training at 5%: the by-file split would leave validation empty
    assert all(zlib.crc32(n.encode()) % 100 >= 5 for n in ("a.txt", "b.txt"))
    for name in ("a", "b"):
        (tmp_path / f"{name}.txt").write_text("".join(f"{name} {k}\n" for k in range(100)))
    c = load_corpus(DataConfig(corpus=f"{tmp_path / 'a.txt'},{tmp_path / 'b.txt'},"))  # trailing comma ignored
    assert c.split == "within files" and len(c.train) == len(c.validation) == 2
    assert [t + v for t, v in zip(c.train, c.validation)] == [(tmp_path / n).read_text() for n in ("a.txt", "b.txt")]


def test_single_line_file_is_cut_at_a_space(tmp_path):
    path = tmp_path / "text8"
    path.write_text(" ".join(f"w{k}" for k in range(1000)))
    (train,), (val,) = (c := load_corpus(DataConfig(corpus=str(path)))).train, c.validation
    assert train + val == path.read_text() and train.endswith(" ") and val.startswith("w")


class _WideTokenizer(ByteTokenizer):
    """Byte ids shifted past 65535: exercises the int32 cache layout."""

    vocab_size, eos_id, cache_identity = 70_000, 69_999, "wide-test"

    def encode_tensor(self, text):
        return super().encode_tensor(text) + 65_000


@pytest.mark.parametrize("text", ["ab", "a b", "\n\n  b\n\n a \n", "x\n" + "y" * 500, "  one line  \n\n"])
def test_within_split_keeps_text_on_both_sides(text, tmp_path):
    (tmp_path / "f.txt").write_text(text)
    c = load_corpus(DataConfig(corpus=str(tmp_path / "f.txt"), val_percent=77))
    (train,), (val,) = c.train, c.validation
    assert train + val == text and train.strip() and val.strip()


def test_token_cache_is_bit_identical_and_rewrites_bad_files(tmp_path, text_corpus):
    docs = load_corpus(DataConfig(corpus=str(text_corpus))).train[:6]
    tok = BPETokenizer.train(docs, 300)
    for max_tokens in (None, 1000):
        plain = encode_documents(docs, tok, max_tokens)
        first = encoded_stream(docs, tok, max_tokens, cache_dir=tmp_path)  # miss: written
        again = encoded_stream(docs, tok, max_tokens, cache_dir=tmp_path)  # hit: read back
        assert first.dtype == again.dtype == torch.int32 and torch.equal(first, plain) and torch.equal(again, plain)
    files = sorted(tmp_path.glob("*.tokens"))
    assert len(files) == 2 and not list(tmp_path.glob(".*.tmp"))
    full = max(files, key=lambda f: f.stat().st_size)
    good = full.read_bytes()
    flipped = good[:200] + bytes([good[200] ^ 1]) + good[201:]  # a valid token value, caught by the crc32
    for bad in (good[:-3], good[:100], b"garbage", flipped, b""):
        full.write_bytes(bad)
        assert torch.equal(encoded_stream(docs, tok, cache_dir=tmp_path), encode_documents(docs, tok))
        assert full.read_bytes() == good  # rewritten
    # other documents or another tokenizer: another key
    encoded_stream(docs[:-1], tok, cache_dir=tmp_path)
    encoded_stream(docs, BPETokenizer.train(docs, 280), cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.tokens"))) == 4


def test_token_cache_layouts_and_default_dir(tmp_path, monkeypatch):
    docs = ["hello", "wörld\n" * 50]
    wide = _WideTokenizer()
    a, b = encoded_stream(docs, wide, cache_dir=tmp_path), encoded_stream(docs, wide, cache_dir=tmp_path)
    assert int(a.max()) > 65_535 and torch.equal(a, encode_documents(docs, wide)) and torch.equal(b, a)
    (path,) = tmp_path.glob("*.tokens")
    assert path.stat().st_size == 64 + 4 * len(a)  # int32 above 65536 tokens in the vocabulary
    monkeypatch.setenv("FIREPE_CACHE", str(tmp_path / "c"))
    assert token_cache_dir() == tmp_path / "c" / "tokens"
    encoded_stream(docs, wide)
    assert len(list((tmp_path / "c" / "tokens").glob("*.tokens"))) == 1
    # the byte tokenizer is not cached (reading back is as slow as encoding)
    assert torch.equal(encoded_stream(docs, ByteTokenizer()), encode_documents(docs, ByteTokenizer()))
    assert len(list((tmp_path / "c" / "tokens").glob("*.tokens"))) == 1


def test_unwritable_token_cache_only_warns(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    wide = _WideTokenizer()
    with pytest.warns(UserWarning, match="could not write the token cache"):
        stream = encoded_stream(["abc", "de"], wide, cache_dir=blocker / "tokens")
    assert torch.equal(stream, encode_documents(["abc", "de"], wide)) and not list(tmp_path.glob(".*"))


def test_undecodable_bytes_in_prompts():
    tok = ByteTokenizer()
    raw = b"ab\xffc\xfe"
    text = raw.decode("utf-8", "surrogateescape")  # how Python passes invalid UTF-8 from argv
    assert tok.encode(text) == list(raw) and tok.encode_tensor(text).tolist() == list(raw)
    with pytest.raises(ValueError, match=r"undecodable character '\\ud800' at position 1"):
        tok.encode("a\ud800")
