"""Training logs (``--log-to``): what TensorBoard, W&B (offline) and Trackio (local) stored, read back
and compared with ``metrics.jsonl``; bad values and missing packages; resume; compare."""

import json
import os
import shutil
import struct
import sys
import uuid
from pathlib import Path

import pytest

from firepe import tracking

from .helpers import one_line_error, run_cli

TINY = ["--preset", "tiny", "--seq-len", "16", "--batch-size", "4", "--no-progress", "--log-every", "1"]


@pytest.fixture(scope="module", autouse=True)
def offline(tmp_path_factory):
    """Nothing touches the network or the home folder: W&B offline, Trackio and every cache under tmp.
    Module-wide because wandb and trackio read some of these once (at setup / import)."""
    root = tmp_path_factory.mktemp("tracking-env")
    env = {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_DIR": root / "wandb",
           "WANDB_CACHE_DIR": root / "wandb-cache", "WANDB_CONFIG_DIR": root / "wandb-config",
           "WANDB_DATA_DIR": root / "wandb-data", "TRACKIO_DIR": root / "trackio", "HF_HOME": root / "hf",
           "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "GRADIO_ANALYTICS_ENABLED": "False",
           "MPLCONFIGDIR": root / "matplotlib", "HOME": root / "home"}
    (root / "home").mkdir()
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, str(value))
        mp.delenv("WANDB_API_KEY", raising=False)
        mp.delenv("TRACKIO_SPACE_ID", raising=False)
        mp.delenv("TRACKIO_SERVER_URL", raising=False)
        for name, mod in list(sys.modules.items()):  # trackio imported earlier keeps its folder in constants
            if name.split(".")[0] == "trackio" and hasattr(mod, "TRACKIO_DIR"):
                mp.setattr(mod, "TRACKIO_DIR", root / "trackio")
        yield root


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("tracking-corpus")
    for k in range(30):
        (root / f"f{k:02d}.py").write_text(f"def f(x):\n    return x * {k}\n" * 30)
    return root


@pytest.fixture(scope="module")
def base(tmp_path_factory, corpus):
    """A trained run to fine-tune (no tracker)."""
    run = tmp_path_factory.mktemp("tracking-base") / "base"
    assert train(run, corpus, "--steps", "1") == 0
    return run


def rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def expected(run: Path) -> dict[int, dict]:
    """metrics.jsonl as {step: {key: value}} without the step key (the trackers' x axis)."""
    return {r["step"]: {k: v for k, v in r.items() if k != "step"} for r in rows(run)}


# -- readers of what each backend stored ----------------------------------------------------


def tensorboard_scalars(run: Path) -> dict[int, dict]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    out: dict[int, dict] = {}
    for tag in acc.Tags()["scalars"]:
        for event in acc.Scalars(tag):
            out.setdefault(event.step, {})[tag] = event.value
    return out


def wandb_records(path: Path):
    """The protobuf records of a ``.wandb`` file (W&B's LevelDB-style log: 7-byte header, 32 KiB
    blocks of chunks ``crc32 | length | type``, type 1 full, 2 first, 3 middle, 4 last)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, buf, block = 7, b"", 32768
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:
            pos += left
            continue
        buf = data[pos + 7:pos + 7 + length] if kind in (1, 2) else buf + data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(buf)
            yield rec


def wandb_runs(run: Path) -> list[dict]:
    """One dict per offline W&B run in ``RUN/wandb`` (oldest first): id, name, group, project,
    config and history {step: {key: value}} without W&B's own ``_`` keys."""
    out = []
    for f in sorted((run / "wandb").glob("offline-run-*/run-*.wandb")):
        info: dict = {"history": {}}
        for rec in wandb_records(f):
            kind = rec.WhichOneof("record_type")
            if kind == "run":
                info.update(id=rec.run.run_id, name=rec.run.display_name, group=rec.run.run_group,
                            project=rec.run.project,
                            config={u.key: json.loads(u.value_json) for u in rec.run.config.update})
            elif kind == "history":
                values = {i.key or ".".join(i.nested_key): json.loads(i.value_json) for i in rec.history.item}
                assert values["_step"] == rec.history.step.num
                info["history"][values["_step"]] = {k: v for k, v in values.items() if not k.startswith("_")}
        out.append(info)
    return out


def trackio_logs(project: str, name: str) -> dict[int, dict]:
    from trackio import utils
    from trackio.sqlite_storage import SQLiteStorage

    assert str(utils.TRACKIO_DIR).startswith(os.environ["TRACKIO_DIR"])  # never the home folder
    return {r["step"]: {k: v for k, v in r.items() if k not in ("step", "timestamp")}
            for r in SQLiteStorage.get_logs(project, name)}


def trackio_runs(project: str) -> list[dict]:
    from trackio.sqlite_storage import SQLiteStorage

    return [{"name": r["name"], "group": SQLiteStorage.get_run_config(project, r["name"]).get("_Group")}
            for r in SQLiteStorage.get_run_records(project)]


def train(out, corpus, *extra):
    return run_cli(["train", "--out", out, "--position", "alibi", "--corpus", corpus, *TINY, *extra])


# -- each backend: what it stored is metrics.jsonl; --resume continues it -------------------


def test_tensorboard_holds_the_metrics_and_resume_continues(tmp_path, corpus):
    run = tmp_path / "run"
    assert train(run, corpus, "--steps", "4", "--checkpoint-every", "2", "--keep-checkpoints", "3",
                 "--log-to", "tensorboard") == 0
    want = expected(run)
    assert sorted(want) == [1, 2, 3, 4] and set(want[1]) == {"loss", "lr", "tokens_per_s", "tokens", "params"}
    assert tensorboard_scalars(run) == {s: pytest.approx(v, rel=1e-6) for s, v in want.items()}
    # killed before the step-4 checkpoint: the resumed run re-logs 3 and 4, TensorBoard keeps the new ones only
    shutil.rmtree(run / "checkpoints" / "step-0000004")
    (run / "checkpoints" / "latest").write_text("step-0000002")
    assert run_cli(["train", "--out", run, "--resume", "--no-progress"]) == 0  # log_to is kept
    assert tensorboard_scalars(run) == {s: pytest.approx(v, rel=1e-6) for s, v in expected(run).items()}
    assert run_cli(["train", "--out", run, "--resume", "--steps", "5", "--no-progress"]) == 0
    want = expected(run)
    assert sorted(want) == [1, 2, 3, 4, 5]
    assert tensorboard_scalars(run) == {s: pytest.approx(v, rel=1e-6) for s, v in want.items()}
    # --log-to none turns it off for the rest of the run
    assert run_cli(["train", "--out", run, "--resume", "--steps", "6", "--no-progress", "--log-to", "none"]) == 0
    assert json.loads((run / "config.json").read_text())["train"]["log_to"] is None
    assert 6 in expected(run) and 6 not in tensorboard_scalars(run)


def test_wandb_offline_holds_the_metrics_and_resume_keeps_the_id(tmp_path, corpus):
    run = tmp_path / "run"
    assert train(run, corpus, "--steps", "3", "--log-to", "wandb", "--log-project", "firepe-test") == 0
    (first,) = wandb_runs(run)
    run_id = json.loads((run / "tracking.json").read_text())["wandb"]["id"]
    assert (first["id"], first["name"], first["project"]) == (run_id, "run", "firepe-test")
    assert first["config"]["train"]["steps"] == 3 and first["config"]["model"]["position"] == "alibi"
    assert first["history"] == expected(run)
    assert run_cli(["train", "--out", run, "--resume", "--steps", "5", "--no-progress"]) == 0
    first, second = wandb_runs(run)
    assert second["id"] == run_id and second["name"] == "run"
    assert {**first["history"], **second["history"]} == expected(run) and sorted(second["history"]) == [4, 5]


def test_trackio_local_holds_the_metrics_and_resume_continues(tmp_path, corpus, offline):
    run, project = tmp_path / "run", f"t-{uuid.uuid4().hex[:8]}"
    assert train(run, corpus, "--steps", "3", "--log-to", "trackio", "--log-project", project) == 0
    assert trackio_logs(project, "run") == expected(run)
    assert (offline / "trackio").is_dir() and not any((offline / "home").iterdir())
    assert run_cli(["train", "--out", run, "--resume", "--steps", "5", "--no-progress"]) == 0
    assert trackio_logs(project, "run") == expected(run) and len(trackio_runs(project)) == 1


def test_finetune_logs_too(tmp_path, base):
    task = tmp_path / "add.jsonl"
    task.write_text("".join(json.dumps({"id": str(i), "input": f"{i}+{i}", "output": str(2 * i)}) + "\n"
                            for i in range(5)))
    ft = tmp_path / "ft"
    assert run_cli(["finetune", base, "--task", f"jsonl:{task}", "--out", ft, "--steps", "2", "--log-every", "1",
                    "--batch-size", "2", "--no-progress", "--log-to", "tensorboard"]) == 0
    want = expected(ft)
    assert sorted(want) == [1, 2]
    assert tensorboard_scalars(ft) == {s: pytest.approx(v, rel=1e-6) for s, v in want.items()}


# -- compare: one tracker run per encoding, grouped by the comparison ------------------------


def test_compare_logs_each_encoding_as_its_own_run(tmp_path, corpus, offline):
    out, project = tmp_path / "cmp", f"c-{uuid.uuid4().hex[:8]}"
    assert run_cli(["compare", "--out", out, "--encodings", "nope,alibi", "--steps", "2", "--max-factor", "1",
                    "--val-tokens", "512", "--corpus", corpus, *TINY, "--log-to", "tensorboard,wandb,trackio",
                    "--log-project", project]) == 0
    for label in ("nope", "alibi"):
        want = expected(out / label)
        assert tensorboard_scalars(out / label) == {s: pytest.approx(v, rel=1e-6) for s, v in want.items()}
        (wb,) = wandb_runs(out / label)
        assert (wb["name"], wb["group"], wb["history"]) == (label, "cmp", want)
        assert trackio_logs(project, label) == want
    assert sorted((r["name"], r["group"]) for r in trackio_runs(project)) == [("alibi", "cmp"), ("nope", "cmp")]
    assert not any((offline / "home").iterdir())


# -- failures --------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", list(tracking.BACKENDS))
def test_missing_package_is_one_line_and_writes_nothing(tmp_path, corpus, capsys, monkeypatch, backend):
    monkeypatch.setitem(sys.modules, backend, None)  # import fails as if not installed
    one_line_error(capsys, ["train", "--out", tmp_path / "r", "--corpus", corpus, *TINY, "--log-to",
                            f"tensorboard,{backend}"],
                   rf"needs the {backend} package.*pip install 'firepe\[{backend}\]'")
    assert not (tmp_path / "r").exists()
    one_line_error(capsys, ["compare", "--out", tmp_path / "c", "--encodings", "nope", "--corpus", corpus, *TINY,
                            "--log-to", backend], rf"pip install 'firepe\[{backend}\]'")
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("value,match", [
    ("tensorbord", r"unknown backend 'tensorbord'; valid: tensorboard, wandb, trackio"),
    ("tensorboard,mlflow", r"unknown backend 'mlflow'; valid: tensorboard, wandb, trackio"),
    ("", r"log_to is empty; valid: tensorboard, wandb, trackio"),
    ("tensorboard,", r"empty entry; valid: tensorboard, wandb, trackio"),
])
def test_bad_log_to_is_one_line(tmp_path, corpus, base, capsys, value, match):
    for cmd in (["train"], ["compare", "--encodings", "nope"], ["ablate"]):
        one_line_error(capsys, [*cmd, "--out", tmp_path / "r", "--corpus", corpus, *TINY, "--log-to", value], match)
    one_line_error(capsys, ["finetune", base, "--out", tmp_path / "r", "--log-to", value], match)
    assert not (tmp_path / "r").exists()


def test_bad_log_project_is_one_line(tmp_path, corpus, capsys):
    one_line_error(capsys, ["train", "--out", tmp_path / "r", "--corpus", corpus, *TINY, "--log-project", "a/b"],
                   "log_project must be a non-empty name")
    assert not (tmp_path / "r").exists()


def test_a_tracker_failing_mid_run_warns_once_and_training_goes_on(tmp_path, corpus, monkeypatch):
    def broken(self, metrics, step):
        if step >= 2:
            raise ConnectionError("network is unreachable")
        return real(self, metrics, step)

    real = tracking.TensorBoardTracker.log
    monkeypatch.setattr(tracking.TensorBoardTracker, "log", broken)
    run = tmp_path / "run"
    with pytest.warns(RuntimeWarning, match="logging to tensorboard failed at step 2") as caught:
        assert train(run, corpus, "--steps", "4", "--log-to", "tensorboard") == 0
    assert sum("logging to tensorboard failed" in str(w.message) for w in caught) == 1
    assert sorted(expected(run)) == [1, 2, 3, 4] and (run / "checkpoints" / "latest").exists()
    assert sorted(tensorboard_scalars(run)) == [1]


def test_a_tracker_that_cannot_start_is_one_line(tmp_path, corpus, capsys, monkeypatch):
    def refuse(self, run):
        raise RuntimeError("No API key configured. Use `wandb login` to log in.")

    monkeypatch.setattr(tracking.WandbTracker, "__init__", refuse)
    run = tmp_path / "run"
    one_line_error(capsys, ["train", "--out", run, "--corpus", corpus, *TINY, "--log-to", "tensorboard,wandb"],
                   r"--log-to wandb could not start \(No API key configured.*WANDB_MODE=offline")
    assert not (run / "checkpoints").exists() and not (run / "metrics.jsonl").exists()
    assert not run.exists()  # a refused start writes nothing: no config.json, tracking.json or .lock
