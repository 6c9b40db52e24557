"""Corpora, tokenizers, packing, prepared token folders and the order training reads them in.

* :mod:`~firepe.data.corpus` -- corpus specs (``stdlib``, local paths, ``hf:NAME``), the train/validation
  split rules, corpora read into memory.
* :mod:`~firepe.data.tokenizer` -- the byte tokenizer and byte-level BPE (``tokenizers``).
* :mod:`~firepe.data.cache` -- packing documents into one stream, and its on-disk cache.
* :mod:`~firepe.data.preparation` / :mod:`~firepe.data.shards` -- ``firepe prepare``: a corpus of any size
  tokenized once into ``uint16``/``uint32`` shards with a manifest, and reading them back.
* :mod:`~firepe.data.order` -- the per-epoch permutation (``randperm``, or a Feistel permutation in
  ``O(1)`` memory for large prepared folders) and :class:`TokenData`.
* :mod:`~firepe.data.streams` -- where a run's tokens come from (in memory or ``--data DIR``).
"""

from .cache import encode_documents, encoded_stream, token_cache_dir
from .corpus import MAX_IN_MEMORY_TEXT, Corpus, error_cause, load_corpus, quiet_hub, stdlib_files
from .order import RANDPERM_LIMIT, EpochOrder, FeistelPermutation, TokenData
from .preparation import prepare
from .shards import PreparedData, ShardedTokens, is_prepared
from .streams import epochs_line, open_prepared, resolve, split_tokens, training_data
from .tokenizer import BPETokenizer, ByteTokenizer, build_tokenizer, load_tokenizer

__all__ = ["Corpus", "load_corpus", "ByteTokenizer", "BPETokenizer", "build_tokenizer",
           "load_tokenizer", "encode_documents", "encoded_stream", "token_cache_dir", "EpochOrder", "TokenData",
           "FeistelPermutation", "RANDPERM_LIMIT", "stdlib_files", "error_cause", "quiet_hub", "MAX_IN_MEMORY_TEXT",
           "prepare", "PreparedData", "ShardedTokens", "is_prepared", "resolve", "training_data", "split_tokens",
           "open_prepared", "epochs_line"]
