import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from simseg.loss import contrastive_loss


def _batch(seed=0, n=8, d=16):
    g = torch.Generator().manual_seed(seed)
    img = F.normalize(torch.randn(n, d, generator=g), dim=-1)
    txt = F.normalize(torch.randn(n, d, generator=g), dim=-1)
    return img, txt


def test_single_process_matches_hand_computation():
    img, txt = _batch()
    t = 0.05
    logits = img @ txt.t() / t
    labels = torch.arange(8)
    want = 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels))
    assert torch.allclose(contrastive_loss(img, txt, t), want)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError):
        contrastive_loss(torch.zeros(2, 4), torch.zeros(3, 4), 0.1)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    img, txt = _batch()
    b = img.shape[0] // world
    li = img[rank * b:(rank + 1) * b].clone().requires_grad_(True)
    lt = txt[rank * b:(rank + 1) * b].clone().requires_grad_(True)
    temp = torch.tensor(0.05, requires_grad=True)
    loss = contrastive_loss(li, lt, temp, rank=rank, world_size=world)
    loss.backward()
    torch.save({"loss": loss.detach(), "gi": li.grad, "gt": lt.grad, "gtemp": temp.grad}, f"{out_dir}/r{rank}.pt")
    dist.destroy_process_group()


def test_two_process_gloo_equals_single_process(tmp_path):
    world = 2
    mp.spawn(_worker, args=(world, _free_port(), str(tmp_path)), nprocs=world, join=True)
    img, txt = _batch()
    img.requires_grad_(True)
    txt.requires_grad_(True)
    temp = torch.tensor(0.05, requires_grad=True)
    loss = contrastive_loss(img, txt, temp)
    loss.backward()
    res = [torch.load(tmp_path / f"r{r}.pt", weights_only=True) for r in range(world)]
    # the mean of the rank losses is the loss of the concatenated batch
    assert torch.allclose(torch.stack([r["loss"] for r in res]).mean(), loss.detach(), atol=1e-6)
    # DDP averages gradients over ranks: each rank's gradient / world equals the single-process gradient slice
    b = img.shape[0] // world
    for r in range(world):
        assert torch.allclose(res[r]["gi"] / world, img.grad[r * b:(r + 1) * b], atol=1e-6)
        assert torch.allclose(res[r]["gt"] / world, txt.grad[r * b:(r + 1) * b], atol=1e-6)
    assert torch.allclose(sum(r["gtemp"] for r in res) / world, temp.grad, atol=1e-6)
