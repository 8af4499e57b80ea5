import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from simseg.config import load_config, to_dict
from simseg.model import build_model
from simseg.optim import lr_scale, param_groups
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


def test_schedule_values():
    assert lr_scale(0, 100, 0.1, 0.1) == pytest.approx(0.0)  # warm-up from 0, as the original
    assert lr_scale(5, 100, 0.1, 0.1) == pytest.approx(0.5)
    assert lr_scale(10, 100, 0.1, 0.1) == pytest.approx(1.0)
    assert lr_scale(55, 100, 0.1, 0.1) == pytest.approx(0.1 + 0.9 * 0.5)  # halfway through the cosine
    assert lr_scale(100, 100, 0.1, 0.1) == pytest.approx(0.1)  # the floor


def test_no_weight_decay_on_norms_biases_temperature(tiny_model):
    decay, no_decay = param_groups(tiny_model, 0.2)
    names = {id(p): n for n, p in tiny_model.named_parameters()}
    assert all("norm" not in names[id(p)].lower() and not names[id(p)].endswith("bias") for p in decay["params"])
    assert any(names[id(p)] == "temperature_param" for p in no_decay["params"])
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 0.2


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_decoupled_accumulation_equals_full_batch(vocab_dir):
    torch.manual_seed(0)
    model = build_model(_cfg(vocab_dir, "x")["model"], load_tokenizer(vocab_dir)).train()  # dropout active
    batch = next(_batches(n=12))
    tok = model.tokenize(batch["captions"])
    results = []
    for chunk in (0, 5, 4):
        model.zero_grad()
        torch.manual_seed(123)
        loss = contrastive_step(model, batch["images"], tok["input_ids"], tok["attention_mask"], chunk_size=chunk)
        results.append((loss, _grads(model)))
    # dropout makes a chunked forward differ from the full one, so compare with dropout off as well
    model.eval()
    ref = []
    for chunk in (0, 5):
        model.zero_grad()
        loss = contrastive_step(model, batch["images"], tok["input_ids"], tok["attention_mask"], chunk_size=chunk)
        ref.append((loss, _grads(model)))
    (l0, g0), (l1, g1) = ref
    assert torch.allclose(l0, l1, atol=1e-6)
    assert g0.keys() == g1.keys() and len(g0) > 10
    for k in g0:
        assert torch.allclose(g0[k], g1[k], atol=1e-5), k
    # in train mode, chunk sizes 5 and 4 replay each chunk's dropout exactly: loss equals the no-grad pass
    for loss, grads in results[1:]:
        assert torch.isfinite(loss) and all(torch.isfinite(g).all() for g in grads.values())


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
    assert "retrieval/RSUM" in summary["eval"]
    assert parquet_root
