"""``simseg train``: kill and resume through the command line, config errors."""

import json
import signal
import subprocess
import sys
import time

import pytest

from tests.test_train import _write_csv_data


def _cli_args(vocab_dir, out, source, steps, extra=()):
    return [sys.executable, "-m", "simseg", "train", "tiny", f"model.tokenizer={vocab_dir}",
            f"train.output_dir={out}", f"train.steps={steps}", "train.batch_size=8", "train.checkpoint_every=2",
            "train.log_every=1", "model.vision.img_size=32", "model.vision.kwargs.patch_size=8",
            "data.image_size=32", f"data.train=[{source}]", *extra, "--no-progress"]


def _webdataset_source(root):
    from tests.test_data import _jpeg, _write_shard

    root.mkdir(parents=True)
    captions = ["a red circle", "a blue star", "a green square", "a cat on the grass", "a dog"]
    for k in range(6):
        _write_shard(root / f"w-{k}.tar", [(f"{k}{i:02d}", _jpeg(10 * k + i, size=(40, 40)),
                                            f"{captions[(k + i) % 5]} {i}".encode()) for i in range(10)], stats=10)
    return f'{{type: webdataset, urls: "{root}/w-{{0..5}}.tar", shuffle_buffer: 4}}'


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["csv", "webdataset"])
def test_sigkill_and_resume_gives_the_same_loss_curve(vocab_dir, tmp_path, kind):
    """Killed with SIGKILL after its step-4 checkpoint, the run resumes where the checkpoint says and its loss curve
    is the uninterrupted one at every step: map-style rows and webdataset streams (two loader workers, each its
    own stream and saved position, shards shuffled) alike."""
    if kind == "csv":
        source, extra = f"{{type: csv, path: {_write_csv_data(tmp_path / 'data')}}}", ()
    else:
        source, extra = _webdataset_source(tmp_path / "shards"), ("data.num_workers=2",)
    steps = 14
    ref = subprocess.run(_cli_args(vocab_dir, tmp_path / "ref", source, steps, extra), capture_output=True,
                         text=True)
    assert ref.returncode == 0, ref.stderr
    run = tmp_path / "killed"
    proc = subprocess.Popen(_cli_args(vocab_dir, run, source, steps, extra), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and not (run / "checkpoints" / "step-00000004").exists():
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run / "checkpoint").exists(), "the run finished before it could be killed"
    resumed = subprocess.run(_cli_args(vocab_dir, run, source, steps, extra) + ["--resume", "auto"],
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stdout
    assert "fresh stream" not in resumed.stderr  # every stream continued from its saved position

    def curve(d):
        return {r["step"]: r["loss"] for r in map(json.loads, (d / "metrics.jsonl").read_text().splitlines())
                if "loss" in r}
    a, b = curve(tmp_path / "ref"), curve(run)
    assert sorted(a) == sorted(b) == list(range(1, steps + 1))
    for s in a:
        assert a[s] == pytest.approx(b[s], abs=1e-5), s


def test_bad_training_config_is_a_clear_error(vocab_dir, tmp_path, capsys):
    from simseg.app.cli import main

    assert main(["train", "tiny", "train.nonexistent=1"]) == 2
    assert "train.nonexistent" in capsys.readouterr().err
    assert main(["train", "tiny", f"model.tokenizer={vocab_dir}", f"train.output_dir={tmp_path}", "train.steps=0"]) == 2
    assert "train.steps" in capsys.readouterr().err



def test_options_may_come_before_between_or_after_overrides(vocab_dir, tmp_path, capsys):
    from simseg.app.cli import main

    out = tmp_path / "run"
    base = ["tiny", f"model.tokenizer={vocab_dir}", f"train.output_dir={out}", "train.steps=1", "train.batch_size=2",
            "data.image_size=32", "model.vision.img_size=32", "train.device=cpu"]
    assert main(["train", "--resume", "auto", *base, "data.train=[{type: csv, path: missing.csv}]",
                 "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing.csv" in err[0]
    assert main(["train", base[0], "--no-progress", *base[1:3], "--resume", "auto", *base[3:],
                 "train.lr=-1"]) == 2
    assert "train.lr: -1 is not allowed" in capsys.readouterr().err


def test_a_new_run_in_a_folder_holding_a_run_is_refused_and_loses_nothing(vocab_dir, tmp_path, capsys):
    from simseg.app.cli import main

    out = tmp_path / "run"
    args = ["train", "tiny", f"model.tokenizer={vocab_dir}", f"train.output_dir={out}", "train.steps=2",
            "train.batch_size=8", "train.checkpoint_every=1", "train.log_every=1", "model.vision.img_size=32",
            "data.image_size=32", f"data.train=[{{type: csv, path: {_write_csv_data(tmp_path / 'data')}}}]",
            "--no-progress"]
    assert main(args) == 0
    capsys.readouterr()
    log, checkpoints = (out / "metrics.jsonl").read_bytes(), sorted(p.name for p in (out / "checkpoints").iterdir())
    assert main(args) == 2  # the same command again, without --resume: the first run's log and checkpoints stay
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"train.output_dir {out}: already holds a run (checkpoints up to step-00000002)" in err[0]
    assert "--resume auto" in err[0]
    assert (out / "metrics.jsonl").read_bytes() == log
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == checkpoints
    assert main([*args, "--resume", "auto"]) == 0
