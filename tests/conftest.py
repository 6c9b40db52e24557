"""The suite runs on the CPU, also on a CUDA machine.

Its tolerances assume fp32 and its error cases assume "no usable CUDA" (``--device cuda``), and the 2-rank
DDP tests would map rank 1 to ``cuda:1``; so CUDA is hidden from this process and the subprocesses it
starts (``CUDA_VISIBLE_DEVICES=""``, set before torch first looks for a GPU). The GPU checks are
``benchmarks/gpu_check.sh``; ``FIREPE_TEST_CUDA=1`` leaves the GPUs visible.
"""

import os

if os.environ.get("FIREPE_TEST_CUDA") != "1":
    os.environ["CUDA_VISIBLE_DEVICES"] = ""

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Token cache and FIRE kernel cache in a temporary folder, not ~/.cache."""
    import os

    old = os.environ.get("FIREPE_CACHE")
    os.environ["FIREPE_CACHE"] = str(tmp_path_factory.mktemp("firepe-cache"))
    yield
    if old is None:
        os.environ.pop("FIREPE_CACHE", None)
    else:
        os.environ["FIREPE_CACHE"] = old


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def text_corpus(tmp_path):
    """A small local corpus folder (several files, so the by-file split has a validation part)."""
    root = tmp_path / "corpus"
    root.mkdir()
    base = "def f(x):\n    return x * {k} + {k}\n\nclass C{k}:\n    value = {k}\n"
    for k in range(40):
        (root / f"file{k:02d}.py").write_text(base.format(k=k) * 30)
    return root
