"""``simseg train``: kill and resume through the command line, config errors."""

import json
import signal
import subprocess
import sys
import time

import pytest

from tests.test_train import CAPTIONS  # noqa: F401


def _write_csv_data(root, n=24):
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    rows = ["image,caption"]
    for i in range(n):
        Image.new("RGB", (40, 40), ((i * 40) % 255, (i * 90) % 255, 30)).save(root / f"{i}.png")
        rows.append(f"{i}.png,{CAPTIONS[i % len(CAPTIONS)]}")
    (root / "train_anno.csv").write_text("\n".join(rows) + "\n")
    return root / "train_anno.csv"



def _cli_args(vocab_dir, out, csv, steps):
    return [sys.executable, "-m", "simseg", "train", "tiny", f"model.tokenizer={vocab_dir}",
            f"train.output_dir={out}", f"train.steps={steps}", "train.batch_size=8", "train.checkpoint_every=2",
            "train.log_every=1", "model.vision.img_size=32", "model.vision.kwargs.patch_size=8",
            "data.image_size=32", f"data.train=[{{type: csv, path: {csv}}}]", "--no-progress"]



@pytest.mark.slow
def test_sigkill_and_resume_gives_the_same_loss_curve(vocab_dir, tmp_path):
    csv = _write_csv_data(tmp_path / "data")
    steps = 14
    ref = subprocess.run(_cli_args(vocab_dir, tmp_path / "ref", csv, steps), capture_output=True, text=True)
    assert ref.returncode == 0, ref.stderr
    run = tmp_path / "killed"
    proc = subprocess.Popen(_cli_args(vocab_dir, run, csv, steps), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and not (run / "checkpoints" / "step-00000004").exists():
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run / "checkpoint").exists(), "the run finished before it could be killed"
    resumed = subprocess.run(_cli_args(vocab_dir, run, csv, steps) + ["--resume", "auto"], capture_output=True,
                             text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stdout

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
