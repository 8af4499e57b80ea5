import copy
import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from simseg.config import load_config, to_dict
from simseg.model import build_model
from simseg.errors import CheckpointError, ConfigError, InputError
from simseg.optim import lr_scale, param_groups, warmup_steps
from simseg.tokenizer import load_tokenizer
from simseg.train import average_gradients, contrastive_step, train
from simseg.train_state import find_resume_checkpoint

CAPTIONS = ["a red circle", "a blue star", "a green square", "a yellow triangle", "a cat on the grass",
            "a dog", "a person riding a horse", "a car and a bus"]


def _cfg(vocab_dir, out, **train):
    cfg = to_dict(load_config("tiny", [f"model.tokenizer={vocab_dir}", f"train.output_dir={out}",
                                      "model.vision.img_size=32", "model.vision.kwargs.patch_size=8"]))
    cfg["train"].update({"steps": 6, "batch_size": 8, "log_every": 1, "checkpoint_every": 0, "warmup": 0.2}, **train)
    return cfg


def _batches(seed=0, n=8, size=32, start=0):
    """Deterministic synthetic batches: batch i depends only on (seed, i)."""
    i = start
    while True:
        g = torch.Generator().manual_seed(seed * 1000 + i)
        yield {"images": torch.randn(n, 3, size, size, generator=g),
               "captions": [CAPTIONS[j] for j in torch.randint(0, len(CAPTIONS), (n,), generator=g)], "skipped": 0}
        i += 1



def test_training_progress_in_a_log_is_a_start_and_an_end_line(vocab_dir, tmp_path, capsys):
    # the bar redrew at every logged step (set_postfix), one line each in a log file, not one every 30 s
    train(_cfg(vocab_dir, tmp_path / "run", steps=4), batch_iter=_batches())
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("train:")]
    assert len(lines) == 2 and "0/4" in lines[0] and "4/4" in lines[1] and "loss=" in lines[1], lines

def _write_csv_data(root, n=24, size=40):
    """A folder of n small solid-colour images and a ``train_anno.csv`` naming them with CAPTIONS in turn."""
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    rows = ["image,caption"]
    for i in range(n):
        Image.new("RGB", (size, size), ((i * 40) % 255, (i * 90) % 255, 30)).save(root / f"{i}.png")
        rows.append(f"{i}.png,{CAPTIONS[i % len(CAPTIONS)]}")
    (root / "train_anno.csv").write_text("\n".join(rows) + "\n")
    return root / "train_anno.csv"


def test_schedule_values():
    assert lr_scale(0, 100, 0.1, 0.1) == pytest.approx(0.0)  # warm-up from 0, as the original
    assert lr_scale(5, 100, 0.1, 0.1) == pytest.approx(0.5)
    assert lr_scale(10, 100, 0.1, 0.1) == pytest.approx(1.0)
    assert lr_scale(55, 100, 0.1, 0.1) == pytest.approx(0.1 + 0.9 * 0.5)  # halfway through the cosine
    assert lr_scale(100, 100, 0.1, 0.1) == pytest.approx(0.1)  # the floor
    assert all(lr_scale(s, 100, 0.1, 0.1, "constant") == 1.0 for s in (0, 5, 50, 99))  # no warm-up, no decay
    with pytest.raises(ConfigError, match="train.schedule"):
        lr_scale(0, 100, schedule="linear")


@pytest.mark.parametrize("total", [100, 140, 399, 1000, 73242])
def test_warmup_length_is_truncated_as_the_original(total):
    """int(total_steps * warmup) warm-up steps (73242 x 0.025 = 1831.05 -> 1831; 140 x 0.025 = 3.5 -> 3, not 4)."""
    n = int(total * 0.025)
    assert warmup_steps(total, 0.025) == n
    assert [lr_scale(s, total) for s in range(n)] == pytest.approx([s / n for s in range(n)])
    assert lr_scale(n, total) == 1.0  # the cosine starts at the first step after the warm-up


def test_training_runs_the_schedule_step_by_step(vocab_dir, tmp_path):
    """The learning rate each step ran at (metrics.jsonl) is the original's: int(5 x 0.3) = 1 warm-up step from lr 0
    (not the rounded 2), then lr x (0.1 + 0.9 x 0.5 x (1 + cos(pi x progress))) over the 4 remaining steps."""
    import math

    train(_cfg(vocab_dir, tmp_path / "run", steps=5, warmup=0.3, lr=1e-3), batch_iter=_batches(), progress=False)
    log = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4, 5]
    expected = [0.0] + [1e-3 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (s - 1) / 4))) for s in range(1, 5)]
    assert [r["lr"] for r in log] == pytest.approx(expected, rel=1e-12, abs=1e-18)


@pytest.mark.parametrize("preset", ["simseg-vit-s16", "simseg-vit-b16"])
def test_paper_presets_are_the_original_recipe(tiny_model, preset):
    from simseg.config import load_preset
    from simseg.train import resolve_precision

    cfg = to_dict(load_preset(preset))
    tc, mc, dc = cfg["train"], cfg["model"], cfg["data"]
    assert (tc["weight_decay"], tc["decay_exclude_1d"], tc["schedule"], tc["warmup"], tc["lr_floor"]) == (
        0.2, False, "cosine", 0.025, 0.1)
    assert (tc["lr"], tuple(tc["betas"]), tc["eps"], tc["batch_size"], tc["chunk_size"]) == (
        1e-4, (0.9, 0.98), 1e-6, 4096, 1024)
    assert (mc["train_pooling"], mc["init"], mc["dropout"]) == ("masked", None, None)
    assert (tc["adamw"], tc["pad_captions"], tc["compile"]) == ("loop", "max_length", False)  # the original's step
    assert dc["autoaugment"] and dc["augment"] and dc["shuffle"]
    assert all("weight" not in s for s in dc["train"])  # mixed by size, as the original's concatenation
    assert resolve_precision(tc["precision"], torch.device("cuda", 0)) == "fp16"  # the original's mixed precision
    assert resolve_precision(tc["precision"], torch.device("cpu")) == "fp32"
    # weight decay on every parameter: ONE group holding all of them, the temperature and biases included
    groups = param_groups(tiny_model, tc["weight_decay"], tc["decay_exclude_1d"])
    assert len(groups) == 1 and groups[0]["weight_decay"] == 0.2
    assert {id(p) for p in groups[0]["params"]} == {id(p) for p in tiny_model.parameters()}


def test_decay_exclusion_of_1d_parameters_is_an_option(tiny_model):
    decay, no_decay = param_groups(tiny_model, 0.2, exclude_1d=True)
    names = {id(p): n for n, p in tiny_model.named_parameters()}
    assert all("norm" not in names[id(p)].lower() and not names[id(p)].endswith("bias") for p in decay["params"])
    assert any(names[id(p)] == "temperature_param" for p in no_decay["params"])
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 0.2
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(tiny_model.parameters()))


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("chunk", [5, 6, 12, 13])  # a short last chunk, exact multiples, one chunk, one over
def test_decoupled_accumulation_equals_full_batch(vocab_dir, chunk):
    torch.manual_seed(0)
    model = build_model(_cfg(vocab_dir, "x")["model"], load_tokenizer(vocab_dir))
    batch = next(_batches(n=12))
    tok = model.tokenize(batch["captions"])
    # dropout draws different masks for a chunk than for the full batch, so compare with dropout off (the replay of
    # each chunk's own masks is the next test)
    model.eval()
    ref = []
    for size in (0, chunk):
        model.zero_grad()
        loss = contrastive_step(model, batch["images"], tok["input_ids"], tok["attention_mask"], chunk_size=size)
        ref.append((loss, _grads(model)))
    (l0, g0), (l1, g1) = ref
    assert torch.allclose(l0, l1, atol=1e-6)
    assert g0.keys() == g1.keys() and len(g0) > 10
    for k in g0:
        assert torch.allclose(g0[k], g1[k], atol=1e-5), k


def test_accumulation_replays_each_chunks_dropout(vocab_dir):
    """With dropout active, the graph pass of each chunk re-embeds it with the dropout masks of its no-grad pass:
    the replayed embeddings equal the first ones (to 1e-6), so the cached gradients are the right ones."""
    torch.manual_seed(0)
    model = build_model(_cfg(vocab_dir, "x")["model"], load_tokenizer(vocab_dir)).train()
    assert any(m.p > 0 for m in model.modules() if isinstance(m, torch.nn.Dropout))  # BERT's 0.1
    batch = next(_batches(n=12))
    tok = model.tokenize(batch["captions"])
    outputs = []
    hook = model.register_forward_hook(lambda mod, args, out: outputs.append([o.detach().clone() for o in out]))
    try:
        contrastive_step(model, batch["images"], tok["input_ids"], tok["attention_mask"], chunk_size=5)
    finally:
        hook.remove()
    assert len(outputs) == 6  # three chunks (5, 5, 2), embedded without a graph, then again with one
    for first, replay in zip(outputs[:3], outputs[3:]):
        for a, b in zip(first, replay):
            torch.testing.assert_close(b, a, rtol=0, atol=1e-6)
    # dropout really was active: the same chunk embedded again with fresh masks differs
    again = model(batch["images"][:5], tok["input_ids"][:5], tok["attention_mask"][:5])
    assert not torch.allclose(again[1], outputs[0][1], atol=1e-6)


def test_short_training_lowers_the_loss(vocab_dir, tmp_path):
    torch.manual_seed(0)
    cfg = _cfg(vocab_dir, tmp_path / "run", steps=30, lr=2e-3)

    def repeat():  # one fixed batch: the loss must go down when the model fits it
        b = next(_batches(n=8))
        while True:
            yield b
    summary = train(cfg, batch_iter=repeat(), progress=False)
    log = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert log[-1]["loss"] < 0.7 * log[0]["loss"]
    assert (tmp_path / "run" / "checkpoint" / "model.safetensors").is_file()
    assert (tmp_path / "run" / "config.yaml").is_file()
    assert summary["steps"] == 30


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world, port, vocab_dir, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.manual_seed(0)
    cfg = _cfg(vocab_dir, out, steps=3, batch_size=8)
    per = 8 // world

    def shard():
        for b in _batches(n=8):
            yield {"images": b["images"][rank * per:(rank + 1) * per],
                   "captions": b["captions"][rank * per:(rank + 1) * per], "skipped": 0}
    cfg["model"]["text"]["config"]["hidden_dropout_prob"] = 0.0
    cfg["model"]["text"]["config"]["attention_probs_dropout_prob"] = 0.0
    train(cfg, batch_iter=shard(), progress=False)
    import torch.distributed as dist

    dist.destroy_process_group()


def test_two_process_gloo_training_equals_one_process(vocab_dir, tmp_path):
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(vocab_dir), str(tmp_path / "ddp")), nprocs=2, join=True)
    torch.manual_seed(0)
    cfg = _cfg(vocab_dir, tmp_path / "single", steps=3, batch_size=8)
    cfg["model"]["text"]["config"]["hidden_dropout_prob"] = 0.0
    cfg["model"]["text"]["config"]["attention_probs_dropout_prob"] = 0.0
    train(cfg, batch_iter=_batches(n=8), progress=False)
    from safetensors.torch import load_file

    a = load_file(tmp_path / "ddp" / "checkpoint" / "model.safetensors")
    b = load_file(tmp_path / "single" / "checkpoint" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=2e-5), k


def test_average_gradients_is_noop_single_process(tiny_model):
    tiny_model.zero_grad()
    tiny_model.image_projection.weight.grad = torch.ones_like(tiny_model.image_projection.weight)
    average_gradients(tiny_model, 1)
    assert torch.all(tiny_model.image_projection.weight.grad == 1)
    tiny_model.zero_grad()


def test_damaged_newest_checkpoint_falls_back(vocab_dir, tmp_path):
    cfg = _cfg(vocab_dir, tmp_path / "run", steps=4, checkpoint_every=2, keep_checkpoints=5)
    train(cfg, batch_iter=_batches(), progress=False)
    ckpts = sorted((tmp_path / "run" / "checkpoints").glob("step-*"))
    assert [c.name for c in ckpts] == ["step-00000002", "step-00000004"]
    weights = ckpts[-1] / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # half-written
    found = find_resume_checkpoint(tmp_path / "run")
    assert found is not None and found[0].name == "step-00000002" and found[1]["step"] == 2


def test_a_save_removes_the_temp_folders_of_killed_writers_only(vocab_dir, tmp_path):
    cfg = _cfg(vocab_dir, tmp_path / "run", steps=2, checkpoint_every=1)
    train(cfg, batch_iter=_batches(), progress=False)
    root = tmp_path / "run" / "checkpoints"
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a writer killed mid-save: its pid runs no more
    orphan = root / f".tmp-step-00000003-{gone.pid}"
    live = root / f".tmp-step-00000003-{os.getppid()}"  # a process that runs (another writer saving now)
    for folder in (orphan, live):
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"half")
    longer = copy.deepcopy(cfg)
    longer["train"]["steps"] = 3
    train(longer, resume="auto", batch_iter=_batches(start=2), progress=False)
    assert not orphan.exists() and live.is_dir()
    assert sorted(p.name for p in root.glob("step-*"))[-1] == "step-00000003"


def test_resuming_with_another_model_config_is_refused_naming_the_keys(vocab_dir, tmp_path):
    cfg = _cfg(vocab_dir, tmp_path / "run", steps=2, checkpoint_every=1)
    train(cfg, batch_iter=_batches(), progress=False)
    wider = copy.deepcopy(cfg)
    wider["train"]["steps"] = 4
    wider["model"]["vision"]["kwargs"]["embed_dim"] = 128  # the checkpoint's ViT is 64 wide: it would be kept
    wider["model"]["image_topk"] = 3
    with pytest.raises(ConfigError, match=r"^--resume: .*step-00000002 holds another model than the config's "
                                          r"\(checkpoint vs config: model\.vision\.kwargs\.embed_dim: 64 vs 128; "
                                          r"model\.image_topk: 5 vs 3\)"):
        train(wider, resume="auto", batch_iter=_batches(start=2), progress=False)
    longer = copy.deepcopy(cfg)  # what a resumed run may change: its length, the dropout, the vocabulary's path
    longer["train"]["steps"], longer["model"]["dropout"] = 3, 0.0
    assert train(longer, resume="auto", batch_iter=_batches(start=2), progress=False)["steps"] == 3


def test_resuming_a_finished_run_reports_its_loss_and_fewer_steps_are_refused(vocab_dir, tmp_path):
    cfg = _cfg(vocab_dir, tmp_path / "run", steps=2, checkpoint_every=1)
    first = train(cfg, batch_iter=_batches(), progress=False)
    again = train(cfg, resume="auto", batch_iter=_batches(start=2), progress=False)  # nothing left to run
    assert again["steps"] == 2 and again["final_loss"] == first["final_loss"]  # the logged loss, not NaN
    shorter = copy.deepcopy(cfg)
    shorter["train"]["steps"] = 1
    with pytest.raises(ConfigError, match=r"^train\.steps: 1 is fewer than the 2 steps of .*step-00000002, the "
                                          r"checkpoint resumed from$"):
        train(shorter, resume="auto", batch_iter=_batches(start=2), progress=False)


def test_resuming_from_a_model_without_training_state_says_to_start_from_it_instead(vocab_dir, tmp_path):
    from simseg.train_state import resume_checkpoint

    run = tmp_path / "run"
    train(_cfg(vocab_dir, run, steps=1), batch_iter=_batches(), progress=False)
    final, weights = run / "checkpoint", run / "checkpoint" / "model.safetensors"  # the final model: no optimizer
    with pytest.raises(CheckpointError, match=rf"^--resume {final}: a model without training state \(no "
                                              rf"train_state\.pt\): .* model\.init={final}$"):
        resume_checkpoint(tmp_path / "new", final)
    with pytest.raises(CheckpointError, match=rf"^--resume {weights}: a file, not a training checkpoint folder "
                                              rf"\(to start from its weights: model\.init={weights}\)$"):
        resume_checkpoint(tmp_path / "new", weights)


def test_training_progress_in_a_log_is_whole_lines(vocab_dir, tmp_path, capsys):
    train(_cfg(vocab_dir, tmp_path / "run", steps=6, log_every=1), batch_iter=_batches(), progress=True)
    err = capsys.readouterr().err  # not a terminal: a line at the start and one at the end, no redraws
    lines = [ln for ln in err.splitlines() if ln.startswith("train:")]
    assert "\r" not in err and len(lines) == 2 and "6/6" in lines[-1] and "loss=" in lines[-1]


def test_periodic_evaluation_hooks_are_logged(vocab_dir, tmp_path):
    from simseg.synthetic import (
        colour_class_names,
        export_retrieval_parquet,
        export_segmentation_split,
        generate_scenes,
    )

    scenes = generate_scenes(6, seed=3, size=32)
    parquet_root = export_retrieval_parquet(scenes, tmp_path / "ret", name="held")
    seg_root = export_segmentation_split(scenes, tmp_path / "seg")
    cfg = _cfg(vocab_dir, tmp_path / "run", steps=4, eval_every=2)
    cfg["eval"] = {"retrieval": {"path": str(tmp_path / "ret" / "held"), "batch_size": 4},
                   "segmentation": {"dataset": "pascal_voc", "data_root": str(seg_root), "limit": 3,
                                    "classes": colour_class_names(), "protocol": "dense",
                                    "crf": False, "params": {"short_side": 64, "crop_size": 64, "stride": 32}}}
    summary = train(cfg, batch_iter=_batches(), progress=False)
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "retrieval/I2T_R@1" in r]
    assert [r["step"] for r in evals] == [2, 4]  # every eval_every steps and at the end
    assert all("seg/mIoU" in r for r in evals)
    assert all(r["seg/protocol"]["name"] == "dense" and r["seg/protocol"]["stride"] == 32 for r in evals)
    assert all(r["retrieval/protocol"]["resize_mode"] == "square" for r in evals)
    assert "retrieval/RSUM" in summary["eval"]
    assert parquet_root


def test_training_time_evaluation_is_the_commands_evaluation(vocab_dir, tmp_path, capsys):
    """With the defaults of the eval section, the final evaluation gives what `simseg eval-seg` and
    `simseg eval-retrieval` give on the saved model: the same protocol (the paper's, CRF on, 288 input, square
    retrieval resize) and the same numbers; the log says which protocol produced them."""
    from simseg.app.cli import main
    from simseg.synthetic import export_retrieval_parquet, export_segmentation_split, generate_scenes

    scenes = generate_scenes(4, seed=5, size=32)
    export_retrieval_parquet(scenes, tmp_path / "ret", name="held")
    seg_root = export_segmentation_split(scenes, tmp_path / "seg")
    cfg = _cfg(vocab_dir, tmp_path / "run", steps=2)
    cfg["eval"] = {"retrieval": {"path": str(tmp_path / "ret" / "held"), "batch_size": 4},
                   "segmentation": {"dataset": "pascal_voc", "data_root": str(seg_root), "limit": 3,
                                    "cache_dir": str(tmp_path / "cache")}}
    ev = train(cfg, batch_iter=_batches(), progress=False)["eval"]
    printed = capsys.readouterr().out
    seg, ret = ev["seg/protocol"], ev["retrieval/protocol"]
    assert (seg["name"], seg["crf"], seg["input_size"], seg["top_n"]) == ("simseg", True, 288, 10)
    assert (ret["resize_mode"], ret["input_size"], ret["transforms"][0]["size"]) == ("square", 288, [324, 324])
    assert "eval at step 2 on pascal_voc: mIoU" in printed and "(protocol simseg: input_size=288" in printed
    assert "(protocol retrieval: resize_mode=square, input_size=288" in printed
    ckpt = str(tmp_path / "run" / "checkpoint")
    assert main(["eval-seg", "--dataset", "pascal_voc", "--data-root", str(seg_root), "--checkpoint", ckpt,
                 "--limit", "3", "--out", str(tmp_path / "seg-report"), "--cache-dir", str(tmp_path / "cache"),
                 "--num-overlays", "0"]) == 0
    assert main(["eval-retrieval", "--dataset", "held", "--data-root", str(tmp_path / "ret"), "--checkpoint", ckpt,
                 "--batch-size", "4", "--out", str(tmp_path / "ret-report")]) == 0
    seg_report = json.loads((tmp_path / "seg-report" / "metrics.json").read_text())
    ret_report = json.loads((tmp_path / "ret-report" / "metrics.json").read_text())
    assert seg_report["mIoU"] == ev["seg/mIoU"] and seg_report["protocol"] == seg
    assert all(ret_report[k] == ev[f"retrieval/{k}"] for k in ("I2T_R@1", "I2T_R@5", "T2I_R@1", "RSUM"))
    assert ret_report["protocol"] == ret


def test_training_time_evaluation_takes_the_benchmarks_paper_settings(vocab_dir, monkeypatch):
    """PASCAL Context: the threshold over the top 30 image-level scores, as eval-seg uses."""
    import simseg.segdata
    import simseg.segment
    from simseg.train import run_evaluations

    seen = {}

    class Bench:
        class_names = ["background", "cat", "dog"]

        def __init__(self, name, root, class_names=None):
            seen["dataset"] = name

    class Stop(Exception):
        pass

    def capture(model, classes, protocol, crf, templates, cache_dir, progress=True, **params):
        seen.update(protocol=protocol, crf=crf, **params)
        raise Stop

    monkeypatch.setattr(simseg.segdata, "SegmentationBenchmark", Bench)
    monkeypatch.setattr(simseg.segment, "Segmenter", capture)
    model = build_model(_cfg(vocab_dir, "x")["model"], load_tokenizer(vocab_dir))
    with pytest.raises(Stop):
        run_evaluations(model, {"segmentation": {"dataset": "pascal_context", "data_root": "."}}, torch.device("cpu"))
    assert seen == {"dataset": "pascal_context", "protocol": "simseg", "crf": True, "top_n": 30}
    assert model.training  # put back in training mode


# ------------------------------------------------------------------------------------------------ pooling, dropout
def test_training_forward_pools_text_as_configured(vocab_dir):
    cfg = _cfg(vocab_dir, "x")["model"]
    torch.manual_seed(0)
    masked = build_model(cfg, load_tokenizer(vocab_dir)).eval()
    vanilla = build_model({**cfg, "train_pooling": "vanilla"}, load_tokenizer(vocab_dir)).eval()
    vanilla.load_state_dict(masked.state_dict())
    assert (masked.train_pooling, vanilla.train_pooling) == ("masked", "vanilla")
    batch = next(_batches(n=4))
    tok = masked.tokenize(batch["captions"], padding="max_length")  # 25 tokens: most of them padding
    with torch.no_grad():
        _, t_masked = masked(batch["images"], tok["input_ids"], tok["attention_mask"])
        _, t_vanilla = vanilla(batch["images"], tok["input_ids"], tok["attention_mask"])
        assert torch.equal(t_masked, masked.encode_text(tok["input_ids"], tok["attention_mask"], masked=True))
        assert torch.equal(t_vanilla, masked.encode_text(tok["input_ids"], tok["attention_mask"], masked=False))
    assert not torch.allclose(t_masked, t_vanilla, atol=1e-4)  # padding tokens win some maxima in the vanilla one
    with pytest.raises(ConfigError, match="model.train_pooling"):
        build_model({**cfg, "train_pooling": "max"}, load_tokenizer(vocab_dir))


@pytest.mark.parametrize("variant", ["masked", "vanilla"])
def test_train_uses_the_configured_pooling(vocab_dir, tmp_path, variant):
    from simseg.loss import contrastive_loss
    from simseg.train import initial_model

    cfg = _cfg(vocab_dir, tmp_path / variant, steps=1)
    cfg["model"].update(train_pooling=variant, dropout=0.0)
    summary = train(cfg, batch_iter=_batches(), progress=False)
    logged = json.loads((tmp_path / variant / "metrics.jsonl").read_text().splitlines()[0])["loss"]
    torch.manual_seed(0)  # train() seeds with train.seed + rank before building the model
    model = initial_model(cfg["model"]).train()
    batch = next(_batches())
    tok = model.tokenize(batch["captions"])
    with torch.no_grad():
        img, txt = model(batch["images"], tok["input_ids"], tok["attention_mask"], masked=variant == "masked")
        other = model(batch["images"], tok["input_ids"], tok["attention_mask"], masked=variant != "masked")
        want, not_want = (float(contrastive_loss(*emb, model.temperature())) for emb in ((img, txt), other))
    assert logged == pytest.approx(want, abs=1e-6)
    assert logged != pytest.approx(not_want, abs=1e-4)
    assert summary["train_pooling"] == variant


def test_model_dropout_sets_every_dropout_of_both_towers(vocab_dir):
    from simseg.model import set_dropout

    cfg = _cfg(vocab_dir, "x")["model"]
    tok = load_tokenizer(vocab_dir)
    batch = next(_batches(n=3))
    ids = tok(batch["captions"], max_length=25, padding="max_length")

    def twice(model):
        model.train()
        return [model(batch["images"], ids["input_ids"], ids["attention_mask"])[1] for _ in range(2)]

    own = build_model(cfg, tok)
    assert {m.p for m in own.text_encoder.modules() if isinstance(m, torch.nn.Dropout)} == {0.1}
    a, b = twice(own)
    assert not torch.equal(a, b)  # BERT's own dropout
    off = build_model({**cfg, "dropout": 0}, tok)
    drops = [m for m in off.modules() if isinstance(m, torch.nn.Dropout)]
    assert len(drops) > 10 and {m.p for m in drops} == {0.0}
    assert any(m in drops for m in off.image_encoder.modules()) and any(m in drops for m in off.text_encoder.modules())
    assert off.text_encoder.config.hidden_dropout_prob == off.text_encoder.config.attention_probs_dropout_prob == 0
    a, b = twice(off)
    assert torch.equal(a, b)  # a training-mode forward is deterministic
    assert {m.p for m in build_model({**cfg, "dropout": 0.3}, tok).modules() if isinstance(m, torch.nn.Dropout)} \
        == {0.3}
    with pytest.raises(ConfigError, match="model.dropout"):
        set_dropout(off, 2)


# ------------------------------------------------------------------------------------------------ fine-tuning
def _save_original_pth(model, path):
    from tests.test_checkpoint import _to_original_layout

    torch.save(_to_original_layout(model), path)
    return path


def test_finetuning_starts_from_the_loaded_weights(vocab_dir, tmp_path):
    from safetensors.torch import load_file
    from timm.layers import resample_abs_pos_embed

    from simseg.checkpoint import save_model
    from simseg.train import initial_model

    cfg = _cfg(vocab_dir, tmp_path / "run", steps=1, warmup=1.0)  # warm-up from lr 0: step 0 runs at lr 0
    cfg["model"]["text"]["config"]["max_position_embeddings"] = 64
    torch.manual_seed(3)
    source = build_model(cfg["model"], load_tokenizer(vocab_dir))  # "trained" at 32 x 32: a 4 x 4 patch grid
    want = source.state_dict()
    pth = _save_original_pth(source, tmp_path / "simseg.vit-t.pth")
    folder = save_model(source, tmp_path / "folder")
    # an original .pth into a model trained at 48: every key as loaded, the position embedding resampled to 6 x 6
    at48 = {**cfg["model"], "init": str(pth), "vision": {**cfg["model"]["vision"], "img_size": 48}}
    model = initial_model(at48)
    got = model.state_dict()
    assert got.keys() == want.keys()
    for k in want:
        if k == "image_encoder.pos_embed":
            expected = resample_abs_pos_embed(want[k], new_size=[6, 6], old_size=[4, 4], num_prefix_tokens=1,
                                              interpolation="bicubic", antialias=False)
            assert got[k].shape == (1, 37, 64) and torch.equal(got[k], expected)
        else:
            assert torch.equal(got[k], want[k]), k
    # a simseg folder, whose tokenizer it holds: weights exactly, and training starts from them at step 0
    run_cfg = {**cfg, "model": {**cfg["model"], "init": str(folder), "tokenizer": None}}
    summary = train(run_cfg, batch_iter=_batches(), progress=False)
    final = load_file(tmp_path / "run" / "checkpoint" / "model.safetensors")
    assert all(torch.equal(final[k], want[k]) for k in want)  # lr 0 at step 0: the loaded weights are unchanged
    log = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert log[0]["step"] == 1 and summary["steps"] == 1
    state = torch.load(tmp_path / "run" / "checkpoints" / "step-00000001" / "train_state.pt", weights_only=True)
    groups = state["optimizer"]["param_groups"]  # the tiny preset decays like the paper's: one group, all params
    assert len(groups) == 1 and groups[0]["weight_decay"] == 0.2
    assert len(groups[0]["params"]) == len(list(source.parameters()))


def test_finetuning_from_a_bad_checkpoint_is_one_clear_line(vocab_dir, tmp_path, capsys):
    from simseg.app.cli import main
    from simseg.train import initial_model

    cfg = _cfg(vocab_dir, tmp_path / "run")
    with pytest.raises(InputError, match=r"model.init: .*nowhere\.pth: file not found"):
        initial_model({**cfg["model"], "init": str(tmp_path / "nowhere.pth")})
    wider = {**cfg["model"], "vision": {**cfg["model"]["vision"], "kwargs": {"embed_dim": 128, "depth": 2,
                                                                             "num_heads": 2, "patch_size": 8}}}
    other = _save_original_pth(build_model(wider, load_tokenizer(vocab_dir)), tmp_path / "wide.pth")
    with pytest.raises(CheckpointError, match=r"model.init: .*wide\.pth: checkpoint does not match the model "
                                              r"\(wrong shape: image_encoder\.blocks\.0\.attn\.proj\.bias"):
        initial_model({**cfg["model"], "init": str(other)})
    from tests.test_checkpoint import _to_original_layout

    layout = _to_original_layout(build_model(cfg["model"], load_tokenizer(vocab_dir)))
    layout["state_dict"]["image_projection.linear.weight"] = torch.zeros(512, 63)
    torch.save(layout, tmp_path / "bent.pth")
    with pytest.raises(CheckpointError, match=r"bent\.pth.*wrong shape: image_projection\.weight: checkpoint "
                                              r"\(512, 63\) vs model \(512, 64\)"):
        initial_model({**cfg["model"], "init": str(tmp_path / "bent.pth")})
    code = main(["train", "tiny", f"model.tokenizer={vocab_dir}", f"train.output_dir={tmp_path / 'cli'}",
                 f"model.init={tmp_path / 'bent.pth'}", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "bent.pth" in err and "image_projection.weight" in err


# ------------------------------------------------------------------------------------------------ deterministic mode
def _deterministic_cfg(vocab_dir, out, csv, init, steps=3):
    cfg = _cfg(vocab_dir, out, steps=steps, batch_size=8, checkpoint_every=1, keep_checkpoints=0, lr=1e-3,
               schedule="constant", adamw="loop", pad_captions="max_length")  # bit-exact with the original's step
    cfg["model"].update(init=str(init), dropout=0, tokenizer=None)
    cfg["data"].update(train=[{"type": "csv", "path": str(csv)}], image_size=32, augment=False, shuffle=False)
    return cfg


def test_deterministic_mode_steps_are_reproducible_and_equal_a_plain_step(vocab_dir, tmp_path):
    """data.augment=false data.shuffle=false train.schedule=constant model.dropout=0, from a checkpoint: every step's
    weights are the same run to run, and the first one equals one AdamW step computed here by hand on the first 8
    rows in source order (square resize, masked pooling, symmetric InfoNCE, decay on every parameter)."""
    from safetensors.torch import load_file

    from simseg.checkpoint import load_model, save_model
    from simseg.images import load_image
    from simseg.loss import contrastive_loss
    from simseg.model import set_dropout
    from simseg.transforms import eval_transform

    csv = _write_csv_data(tmp_path / "data", n=16)
    torch.manual_seed(7)
    init = save_model(build_model(_cfg(vocab_dir, "x")["model"], load_tokenizer(vocab_dir)), tmp_path / "init")
    runs = [tmp_path / "a", tmp_path / "b"]
    for out in runs:
        train(_deterministic_cfg(vocab_dir, out, csv, init), progress=False)

    def weights(run, step):
        return load_file(run / "checkpoints" / f"step-{step:08d}" / "model.safetensors")

    for step in (1, 2, 3):
        a, b = weights(runs[0], step), weights(runs[1], step)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), step
    losses = [[json.loads(x)["loss"] for x in (r / "metrics.jsonl").read_text().splitlines()] for r in runs]
    assert losses[0] == losses[1] and len(losses[0]) == 3

    model = load_model(init).train()
    set_dropout(model, 0.0)
    rows = [line.split(",") for line in csv.read_text().splitlines()[1:9]]
    tf = eval_transform(32, mode="square")
    images = torch.stack([tf(load_image(csv.parent / name)) for name, _ in rows])
    tokens = model.tokenize([caption for _, caption in rows], padding="max_length")
    img, txt = model(images, tokens["input_ids"], tokens["attention_mask"], masked=True)
    loss = contrastive_loss(img, txt, model.temperature())
    loss.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.2)
    opt.step()
    assert losses[0][0] == loss.item()
    first = weights(runs[0], 1)
    for name, p in model.state_dict().items():
        assert torch.equal(first[name], p), name
    # the step's gradients, as a cross-check reads them: Adam's first moment after one step is (1 - beta1) * grad
    state = torch.load(runs[0] / "checkpoints" / "step-00000001" / "train_state.pt", weights_only=True)
    moments = state["optimizer"]["state"]
    assert len(moments) == len(grads)
    for i, g in enumerate(grads):
        assert torch.allclose(moments[i]["exp_avg"] / (1 - 0.9), g, rtol=1e-5, atol=1e-9), i


# ------------------------------------------------------------------------------------------------ resume robustness
def test_resume_skips_damaged_files_and_says_which(vocab_dir, tmp_path, capsys):
    from simseg.app.cli import main
    from simseg.train_state import find_resume_checkpoint

    run = tmp_path / "run"
    train(_cfg(vocab_dir, run, steps=6, checkpoint_every=1, keep_checkpoints=0), batch_iter=_batches(),
          progress=False)
    root = run / "checkpoints"
    assert [p.name for p in sorted(root.glob("step-*"))] == [f"step-{i:08d}" for i in range(1, 7)]
    capsys.readouterr()
    (root / "latest").write_bytes(b"\x00\xff not a folder name")
    (root / "step-00000006" / "model.safetensors").unlink()
    weights = root / "step-00000005" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    (root / "step-00000004" / "state.json").write_text("{ not json")
    state = root / "step-00000003" / "train_state.pt"
    state.write_bytes(state.read_bytes()[:-100])
    found = find_resume_checkpoint(run)
    assert found is not None and found[0].name == "step-00000002" and found[1]["step"] == 2
    err = capsys.readouterr().err
    assert "latest" in err and "garbage" in err
    for name, what in (("step-00000006", "missing model.safetensors"), ("step-00000005", "model.safetensors"),
                       ("step-00000004", "state.json: not valid JSON"), ("step-00000003", "train_state.pt")):
        assert any(name in line and what in line for line in err.splitlines()), name
    for step in (1, 2):
        (root / f"step-{step:08d}" / "state.json").write_text("")
    with pytest.raises(CheckpointError, match=r"no valid checkpoint to resume from \(6 damaged"):
        find_resume_checkpoint(run)
    code = main(["train", "tiny", f"model.tokenizer={vocab_dir}", f"train.output_dir={run}", "--resume", "auto",
                 "--no-progress"])
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and "no valid checkpoint" in last and str(root) in last
    assert main(["train", "tiny", f"model.tokenizer={vocab_dir}", f"train.output_dir={run}", "--no-progress"]) == 2
    assert "already holds a run" in capsys.readouterr().err  # so the advice is another folder, not no --resume
    assert "start a new run in another train.output_dir" in last


# ------------------------------------------------------------------------------------------------ several nodes
def _resume_worker(rank, world, port, vocab_dir, csv, outs):
    """Two ranks writing to different folders (two nodes, no shared file system): a run of 4 steps; then node 0
    loses what came after step 2 (the kill) and node 1 holds a stale step-2 folder of other weights; then the same
    ranks resume."""
    import shutil

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    cfg = _cfg(vocab_dir, outs[rank], steps=4, batch_size=8, checkpoint_every=2, keep_checkpoints=0)
    cfg["data"].update(train=[{"type": "csv", "path": csv}], image_size=32)
    train(cfg, progress=False)
    if rank == 0:
        node0, node1 = Path(outs[0]), Path(outs[1])
        assert not (node1 / "checkpoints").exists()  # only rank 0 writes
        shutil.copytree(node0, node0.parent / "uninterrupted")
        shutil.rmtree(node0 / "checkpoints" / "step-00000004")
        shutil.rmtree(node0 / "checkpoint")
        stale = node1 / "checkpoints" / "step-00000002"
        shutil.copytree(node0 / "checkpoints" / "step-00000002", stale)
        (stale / "model.safetensors").write_bytes(b"other weights")
    dist.barrier()
    train(cfg, resume="auto", progress=False)
    dist.destroy_process_group()


def test_two_ranks_resume_without_a_shared_file_system(vocab_dir, tmp_path, capfd):
    """Rank 0 decides the checkpoint and broadcasts it; rank 1, whose folder holds another step-2, says which file
    differs and receives the state from rank 0; the resumed run ends exactly where the uninterrupted one did."""
    from safetensors.torch import load_file

    csv = str(_write_csv_data(tmp_path / "data", n=16))
    node0, node1 = tmp_path / "node0", tmp_path / "node1"
    mp.spawn(_resume_worker, args=(2, _free_port(), str(vocab_dir), csv, [str(node0), str(node1)]), nprocs=2,
             join=True)
    out, err = capfd.readouterr()
    assert "resuming from" in out and "step-00000002" in out
    assert "rank 1: cannot read the checkpoint rank 0 resumes from" in err
    assert f"{node1 / 'checkpoints' / 'step-00000002' / 'model.safetensors'}: differs from rank 0's" in err
    ref = tmp_path / "uninterrupted"
    want, got = (load_file(d / "checkpoint" / "model.safetensors") for d in (ref, node0))
    assert all(torch.equal(want[k], got[k]) for k in want)

    def curve(d):
        return [r["loss"] for r in map(json.loads, (d / "metrics.jsonl").read_text().splitlines())]
    assert curve(node0) == curve(ref) and len(curve(ref)) == 4


def test_lost_samples_are_counted_exactly_in_the_log_and_summary(vocab_dir, tmp_path):
    """A webdataset source with a missing, a truncated and a broken-member shard (10 samples lost) and a CSV with two
    rows whose images are gone: one step over one epoch of each reports exactly those, per source and in all."""
    from tests.test_data import BROKEN_LOST, _broken_shards

    (tmp_path / "shards").mkdir()
    pattern = _broken_shards(tmp_path / "shards")
    csv = _write_csv_data(tmp_path / "rows", n=8)
    for name in ("2.png", "5.png"):
        (csv.parent / name).unlink()
    cfg = _cfg(vocab_dir, tmp_path / "run", steps=1, batch_size=16)
    cfg["data"].update(image_size=32, shuffle=False, train=[
        {"type": "webdataset", "urls": pattern, "allow_missing_shards": True, "shuffle_buffer": 3, "weight": 1.0},
        {"type": "csv", "path": str(csv), "weight": 1.0}])
    summary = train(cfg, progress=False)
    assert summary["bad_samples"] == BROKEN_LOST + 2 and summary["bad_samples_by_source"] == [BROKEN_LOST, 2]
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert record["bad_samples"] == BROKEN_LOST + 2 and record["bad_samples_by_source"] == [BROKEN_LOST, 2]


# ------------------------------------------------------------------------------------------------ step speed paths
def _step_grads(model, captions, padding, images, packed=False, chunk_size=0):
    tokens = model.tokenize(captions, padding=padding)
    model.zero_grad(set_to_none=True)
    loss = contrastive_step(model, images, tokens["input_ids"], tokens["attention_mask"], masked=True, packed=packed,
                            chunk_size=chunk_size)
    return loss, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("chunk_size", [0, 2])
def test_packed_captions_give_the_same_masked_step(tiny_model, chunk_size):
    """``train.pad_captions: packed``: BERT computes no padding, and the loss and every gradient are those of the
    padded step (dropout off), in a plain step and in the decoupled accumulation."""
    import copy

    from simseg.model import set_dropout
    from simseg.train import caption_padding, packs_captions

    assert caption_padding(True, "packed") == "longest" and caption_padding(False, "packed") == "max_length"
    assert packs_captions(True, "packed") and not packs_captions(False, "packed") and not packs_captions(True)
    model = copy.deepcopy(tiny_model).train()
    set_dropout(model, 0.0)
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    captions = [CAPTIONS[i] for i in (5, 0, 6, 7)]  # 4 to 7 tokens: several per packed row, padding to skip
    loss_a, grads_a = _step_grads(model, captions, "longest", images, chunk_size=chunk_size)
    loss_b, grads_b = _step_grads(model, captions, "longest", images, packed=True, chunk_size=chunk_size)
    assert torch.allclose(loss_a, loss_b, atol=1e-6)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        assert torch.allclose(grads_a[name], grads_b[name], atol=1e-5, rtol=1e-4), \
            (name, float((grads_a[name] - grads_b[name]).abs().max()), float(grads_a[name].abs().max()))


def test_padding_to_the_longest_gives_the_same_masked_step(tiny_model):
    import copy

    from simseg.train import caption_padding

    assert caption_padding(True) == "longest" and caption_padding(False) == "max_length"
    assert caption_padding(True, "max_length") == caption_padding(False, "auto") == "max_length"
    model = copy.deepcopy(tiny_model).train()
    from simseg.model import set_dropout

    set_dropout(model, 0.0)
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    captions = CAPTIONS[:4]
    assert model.tokenize(captions, padding="longest")["input_ids"].shape[1] < model.max_length
    loss_a, grads_a = _step_grads(model, captions, "max_length", images)
    loss_b, grads_b = _step_grads(model, captions, "longest", images)
    assert torch.allclose(loss_a, loss_b, atol=1e-6)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:  # float rounding only: attention over 25 or fewer keys sums in another order
        assert torch.allclose(grads_a[name], grads_b[name], atol=1e-5, rtol=1e-4), \
            (name, float((grads_a[name] - grads_b[name]).abs().max()), float(grads_a[name].abs().max()))


def test_a_run_with_packed_captions_trains(vocab_dir, tmp_path):
    cfg = _cfg(vocab_dir, tmp_path / "run", steps=2, pad_captions="packed")
    summary = train(cfg, batch_iter=_batches(), progress=False)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert summary["steps"] == 2 and [r["step"] for r in records] == [1, 2]
    assert all(math.isfinite(r["loss"]) for r in records)


@pytest.mark.parametrize("kernel", ["fused", "foreach"])
def test_adamw_kernels_make_the_loop_update(tiny_model, kernel):
    import copy

    from simseg.optim import adamw

    models = [copy.deepcopy(tiny_model) for _ in range(2)]
    opts = [torch.optim.AdamW(param_groups(models[0], 0.2), lr=1e-3, betas=(0.9, 0.98), eps=1e-6, foreach=False),
            adamw(param_groups(models[1], 0.2), lr=1e-3, betas=(0.9, 0.98), eps=1e-6, kernel=kernel)]
    assert opts[1].defaults["fused" if kernel == "fused" else "foreach"]
    g = torch.Generator().manual_seed(1)
    grads = [[torch.randn(p.shape, generator=g) for p in models[0].parameters()] for _ in range(3)]
    for step_grads in grads:
        for model, opt in zip(models, opts):
            for p, gr in zip(model.parameters(), step_grads):
                p.grad = gr.clone()
            opt.step()
    for (name, a), b in zip(models[0].named_parameters(), models[1].parameters()):
        assert torch.allclose(a, b, atol=1e-6), name


def test_adamw_rejects_an_unknown_kernel(tiny_model):
    from simseg.optim import adamw

    with pytest.raises(ConfigError, match="AdamW kernel 'turbo'"):
        adamw(param_groups(tiny_model, 0.2), lr=1e-3, betas=(0.9, 0.98), eps=1e-6, kernel="turbo")


def test_gradient_buffer_backward_accumulates_into_its_views(tiny_model):
    import copy

    from simseg.train import GradientBuffer

    model = copy.deepcopy(tiny_model).train()
    buf = GradientBuffer(model)
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert GradientBuffer.base_of(grads) is buf.flat
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    tokens = model.tokenize(CAPTIONS[:4], padding="longest")
    for _ in range(2):  # two steps: each starts from zero and ends in the views, no new gradient tensor
        buf.zero()
        torch.manual_seed(0)
        contrastive_step(model, images, tokens["input_ids"], tokens["attention_mask"])
        assert all(p.grad._base is buf.flat for p in model.parameters() if p.requires_grad)
        from_buffer = buf.flat.clone()
    # the same step with fresh gradient tensors gives the same gradients
    model.zero_grad(set_to_none=True)
    torch.manual_seed(0)
    contrastive_step(model, images, tokens["input_ids"], tokens["attention_mask"])
    fresh = torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.requires_grad])
    assert torch.allclose(from_buffer, fresh, atol=1e-7)
    assert GradientBuffer.base_of([p.grad for p in model.parameters() if p.requires_grad]) is None


def test_train_compile_falls_back_to_eager_without_a_compiler(tiny_model, monkeypatch, capsys):
    import copy

    import simseg.train as tr

    monkeypatch.setattr(tr.shutil, "which", lambda name: None)
    monkeypatch.delenv("CXX", raising=False)
    assert "no C++ compiler" in tr.compiler_problem(torch.device("cpu"))
    model = copy.deepcopy(tiny_model)
    assert tr.compile_forward(model, torch.device("cpu")) is False
    assert "train.compile=true but torch.compile cannot run here" in capsys.readouterr().out
    assert model._compiled_call_impl is None  # still the eager forward


def test_train_compile_is_a_checked_config_key(vocab_dir, tmp_path):
    from simseg.schema import validate_config

    cfg = _cfg(vocab_dir, tmp_path / "run")
    assert cfg["train"]["compile"] is False  # in the preset
    assert (cfg["train"]["adamw"], cfg["train"]["pad_captions"]) == ("fused", "auto")
    for key, bad in (("compile", "yes"), ("adamw", "turbo"), ("pad_captions", "shortest")):
        broken = {**cfg, "train": {**cfg["train"], key: bad}}
        with pytest.raises(ConfigError, match=f"train.{key}"):
            validate_config(broken)
