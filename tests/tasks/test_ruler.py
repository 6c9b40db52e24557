"""The RULER-style tasks (tasks/ruler.py): deterministic generators whose answers are checked by an
independent reading of the generated tokens (the haystack parsed in plain Python, the variable chains
followed with a dict, the words counted with collections.Counter), the option and length errors, and one
``firepe synth --task niah_single`` run that reports ``by_depth``."""

import json
from collections import Counter

import pytest
import torch

from firepe.tasks.ruler import DEPTH_BINS, NEEDLE_TASKS, RULER_TASKS, by_depth
from firepe.tasks.synthetic import PAD, SEP, SynthConfig, make_task

from ..helpers import one_line_error, run_cli

NIAH = [t for t in NEEDLE_TASKS if t != "vartrack"]
SMALL = {"niah_multivalue": dict(needles=3), "niah_multiquery": dict(needles=5, query_keys=3),
         "vartrack": dict(chains=3, hops=3, value_len=2), "cwe": dict(words=10, top=4), "fwe": dict(words=12)}


def _gen(task, count, n, seed=0, training=False):
    return task.batch(count, n, torch.Generator().manual_seed(seed), training=training)


def _cfg(name, **kw):
    return SynthConfig(task=name, **{**SMALL.get(name, {}), **kw})


@pytest.mark.parametrize("name", RULER_TASKS)
def test_generation_is_deterministic_and_in_the_vocabulary(name):
    task = make_task(_cfg(name))
    a, b = _gen(task, 6, 96, seed=5), _gen(task, 6, 96, seed=5)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], _gen(task, 6, 96, seed=6)[0])
    x1, y1, pos = task.training_rows(8, 64, seed=0, step=3)
    x2, y2, _ = task.training_rows(8, 64, seed=0, step=3)
    assert torch.equal(x1, x2) and torch.equal(y1, y2) and pos is None
    assert not torch.equal(x1, task.training_rows(8, 64, seed=1, step=3)[0])
    assert not torch.equal(x1, task.training_rows(8, 64, seed=0, step=4)[0])
    for n in (64, 200):
        tokens, answer, _ = task.eval_batch(4, n)
        assert tokens.shape == (4, n) and int(tokens.min()) >= 0 and int(tokens.max()) < task.vocab_size
        assert (answer >= 0).sum(1).min() > 0
    assert torch.equal(task.eval_batch(3, 64)[0], make_task(_cfg(name)).eval_batch(3, 64)[0])


def _parse_haystack(task, ctx):
    """Needles ``(key, value, start)`` and the noise tokens of a context, read token by token."""
    L, needles, noise, t = task.cfg.value_len, [], [], 0
    while t < len(ctx):
        tok = ctx[t]
        if task.name0 <= tok < task.query:
            value = ctx[t + 1:t + 1 + L]
            assert all(task.digit0 <= d < task.digit0 + 10 for d in value)
            needles.append((tok, value, t))
            t += 1 + L
        else:
            noise.append(tok)
            t += 1
    return needles, noise


@pytest.mark.parametrize("name", NIAH)
def test_niah_answers_are_the_values_of_the_queried_keys(name):
    cfg = _cfg(name)
    task = make_task(cfg)
    L, P = cfg.value_len, cfg.noise
    for n, training in ((64, True), (150, False)):
        tokens, answer, extra = _gen(task, 16, n, seed=2, training=training)
        for row, ans, depth in zip(tokens.tolist(), answer.tolist(), extra["depth"].tolist()):
            ctx_len = row.index(task.query)
            needles, noise = _parse_haystack(task, row[:ctx_len])
            assert noise == [task.noise0 + i % P for i in range(len(noise))]  # the repeated noise pattern
            count = {"niah_single": 1}.get(name, cfg.needles)
            assert len(needles) == count
            keys = [k for k, _, _ in needles]
            if name == "niah_multivalue":
                assert len(set(keys)) == 1
            else:
                assert len(set(keys)) == count  # distinct keys
            # the tail: ``? k [answer]`` per query
            tail, t, queries = row[ctx_len:], 0, []
            while t < len(tail):
                assert tail[t] == task.query and task.name0 <= tail[t + 1] < task.query
                key = tail[t + 1]
                width = L * (cfg.needles if name == "niah_multivalue" else 1)
                at = ctx_len + t + 2
                queries.append((key, tail[t + 2:t + 2 + width], at, width))
                t += 2 + width
            assert len(queries) == (cfg.query_keys if name == "niah_multiquery" else 1)
            assert len({k for k, *_ in queries}) == len(queries)
            for a, (key, got, at, width) in enumerate(queries):
                mine = [(v, s) for k, v, s in needles if k == key]
                assert got == [d for v, _ in mine for d in v]  # every value of the key, in order of appearance
                assert ans[at:at + width] == [a] * width
                want_depth = [s / (ctx_len - 1 - L) for _, s in mine for _ in range(L)]
                assert depth[at:at + width] == pytest.approx(want_depth)
            assert sum(x >= 0 for x in ans) == sum(w for *_, w in queries)
            assert all(0.0 <= d <= 1.0 for d in depth)


def test_vartrack_answers_follow_the_chains():
    cfg = _cfg("vartrack")
    task = make_task(cfg)
    L = cfg.value_len
    for n, training in ((64, True), (300, False)):
        tokens, answer, extra = _gen(task, 16, n, seed=4, training=training)
        for row, ans, depth in zip(tokens.tolist(), answer.tolist(), extra["depth"].tolist()):
            q = row.index(task.query)
            ctx, assigned, where, t = row[:q], {}, {}, 0
            order = []
            while t < q:
                if task.name0 <= ctx[t] < task.query:
                    assert ctx[t + 1] == SEP
                    var = ctx[t]
                    assert var not in assigned  # every variable is assigned once
                    if task.name0 <= ctx[t + 2] < task.query:
                        assert ctx[t + 2] in assigned  # copied from a variable assigned before
                        assigned[var], t2 = assigned[ctx[t + 2]], t + 3
                    else:
                        assigned[var], t2 = tuple(ctx[t + 2:t + 2 + L]), t + 2 + L
                    where[var] = t
                    order.append(var)
                    t = t2
                else:
                    assert task.noise0 <= ctx[t] < task.digit0
                    t += 1
            assert len(assigned) == cfg.chains * (cfg.hops + 1)
            assert len(set(assigned.values())) == cfg.chains  # distinct values
            value = tuple(row[q + 1:q + 1 + L])
            want = [v for v in order if assigned[v] == value]
            got = [row[t] for t, a in enumerate(ans) if a == 0]
            assert got == want and len(want) == cfg.hops + 1
            assert [t for t, a in enumerate(ans) if a == 0] == list(range(q + 1 + L, n))
            lens = {v: (2 + L if task.digit0 <= row[where[v] + 2] < task.digit0 + 10 else 3) for v in want}
            for v, t in zip(want, range(q + 1 + L, n)):
                assert depth[t] == pytest.approx(where[v] / (q - lens[v]))
                assert 0.0 <= depth[t] <= 1.0


@pytest.mark.parametrize("name", ["cwe", "fwe"])
def test_word_extraction_answers_are_the_most_frequent_words(name):
    cfg = _cfg(name)
    task = make_task(cfg)
    k = cfg.top
    for n in (64, 257):
        tokens, answer, _ = _gen(task, 16, n, seed=3)
        for row, ans in zip(tokens.tolist(), answer.tolist()):
            assert row[n - k - 1] == task.query
            ctx = [t for t in row[:n - k - 1] if t != PAD]
            assert all(task.word0 <= t < task.query for t in ctx)
            assert all(t == PAD for t in row[:n - k - 1 - len(ctx)])  # left padding only
            counts = Counter(ctx).most_common()
            assert all(a[1] > b[1] for a, b in zip(counts[:k], counts[1:k + 1]))  # no ties at the top
            assert row[n - k:] == [w for w, _ in counts[:k]]
            assert [t for t, a in enumerate(ans) if a >= 0] == list(range(n - k, n)) and max(ans) == 0
            if name == "cwe":  # every other word equally rare
                assert len({c for _, c in counts[k:]}) == 1 and len(counts) == cfg.words


def test_by_depth_bins_each_answer_at_its_first_token():
    answer = torch.tensor([[-1, 0, 0, -1, 1, 1], [-1, 0, 0, -1, 1, 1]])
    depth = torch.tensor([[0.0, 0.1, 0.9, 0, 0.5, 0.5], [0, 1.0, 0.0, 0, 0.79, 0.0]])
    ok = torch.tensor([True, False, True, True])
    bins = by_depth(depth, answer, ok)
    assert len(bins) == DEPTH_BINS and bins[0]["max_depth"] == 0.2 and bins[4]["min_depth"] == 0.8
    assert [(b["correct"], b["answers"]) for b in bins] == [(1, 1), (0, 0), (0, 1), (1, 1), (1, 1)]


@pytest.mark.parametrize("cfg, n, match", [
    (dict(task="niah_single"), 10, "at least 11"),
    (dict(task="niah_multikey", needles=10), 55, "at least 56"),
    (dict(task="niah_multiquery"), 27, "at least 32"),
    (dict(task="vartrack"), 20, "do not fit"),
    (dict(task="cwe"), 20, "too short"),
    (dict(task="fwe"), 20, "too short"),
])
def test_lengths_that_cannot_hold_an_example_are_refused(cfg, n, match):
    task = make_task(SynthConfig(**cfg))
    with pytest.raises(ValueError, match=match):
        task.check_level(n)
    task.check_level(n + 60)


@pytest.mark.parametrize("kwargs, match", [
    (dict(task="niah_single", value_len=0), r"--value-len must be an integer in \[1, 4096\], got 0"),
    (dict(task="niah_single", value_len=17), "at most 16 digits"),
    (dict(task="niah_multikey", needles=17), "more than the 16 distinct keys"),
    (dict(task="niah_multiquery", query_keys=5), "--query-keys 5 is more than the 4 needles"),
    (dict(task="vartrack", chains=6), "needs --chains x"),
    (dict(task="vartrack", chains=11, hops=0), "--hops must be"),
    (dict(task="vartrack", chains=11, value_len=1, names=40), "only 10"),
    (dict(task="cwe", top=16), "--top 16 must be less than --words 16"),
    (dict(task="fwe", words=True), "--words must be an integer"),
    (dict(task="niah_single", needles=3), "--needles applies to niah_multikey and niah_multivalue"),
    (dict(task="recall", top=2), "--top applies to cwe and fwe only"),
    (dict(task="cwe", noise=3), "--noise applies to niah_single"),
    (dict(task="niah_multikey", chains=3), "--chains applies to vartrack only"),
    (dict(task="addition", query_keys=1), "--query-keys applies to niah_multiquery only"),
])
def test_bad_options_are_one_clear_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SynthConfig(**kwargs)


def test_cli_niah_single_writes_by_depth(tmp_path, capsys):
    out = tmp_path / "out"
    code = run_cli(["synth", "--out", out, "--task", "niah_single", "--encodings", "rope", "--seeds", "1",
                    "--steps", "2", "--batch-size", "2", "--no-progress", "--max-factor", "2", "--examples", "10",
                    "--seq-len", "32", "--threads", "1"])
    assert code == 0
    saved = json.loads((out / "results.json").read_text())
    assert saved["task"]["task"] == "niah_single" and saved["levels"] == [32, 64]
    for res in saved["runs"][0]["results"]:
        bins = res["by_depth"]
        assert len(bins) == DEPTH_BINS and sum(b["answers"] for b in bins) == res["answers"] == 10
        assert sum(b["correct"] for b in bins) == res["correct"]
    assert (out / "depth_rope.png").stat().st_size > 1000 and not (out / "recall_rope.png").exists()
    assert run_cli(["report", out]) == 0
    assert "depth_rope.png" in (out / "report.md").read_text()
    one_line_error(capsys, ["synth", "--out", tmp_path / "o2", "--task", "niah_single", "--needles", "3",
                            "--steps", "2", "--no-progress"], "--needles applies to")
    one_line_error(capsys, ["synth", "--out", tmp_path / "o3", "--task", "cwe", "--seq-len", "16", "--steps", "2",
                            "--no-progress"], "too short")
    assert not (tmp_path / "o2").exists() and not (tmp_path / "o3").exists()


def test_depth_grid_pools_the_seeds_per_bin_and_level():
    from firepe.plots import depth_grid

    def res(level, bins):
        return {"level": level, "by_depth": [{"min_depth": i / 2, "max_depth": (i + 1) / 2, "correct": c,
                                              "answers": a} for i, (c, a) in enumerate(bins)]}

    summary = {"levels": [32, 64], "runs": [
        {"label": "fire", "results": [res(32, [(3, 4), (1, 4)]), res(64, [(0, 0), (2, 8)])]},
        {"label": "fire", "results": [res(32, [(1, 4), (4, 4)]), res(64, [(0, 0), (6, 8)])]},
        {"label": "rope", "results": [res(32, [(0, 4), (0, 4)]), res(64, [(0, 2), (0, 2)])]}]}
    grid, ticks = depth_grid(summary, "fire")
    assert ticks == ["0-50%", "50-100%"]
    assert grid[0, 0] == 100 * 4 / 8 and grid[1, 0] == 100 * 5 / 8 and grid[1, 1] == 100 * 8 / 16
    assert torch.isnan(grid[0, 1])  # no answer in that bin at 64 in any seed: blank, not 0%
    with pytest.raises(ValueError, match="no by-depth results of 'nope'"):
        depth_grid(summary, "nope")
