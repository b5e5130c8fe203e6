"""Data-parallel training as fairseq-train runs it on several GPUs (DistributedDataParallel with
find_unused_parameters, as configs/base sets), here in two CPU processes over gloo: the token lookups' sparse
gradients and an encoder the batch does not use still give every rank the average of the ranks' gradients."""
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from test_unival import batch, tiny_model


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rank_loss(model, rank: int):
    """A different batch on each rank."""
    inputs = batch(size=2)
    generator = torch.Generator().manual_seed(10 + rank)
    inputs["patch_images"] = torch.randn(inputs["patch_images"].shape, generator=generator)
    inputs["src_tokens"] = torch.randint(4, 60, inputs["src_tokens"].shape, generator=generator)
    logits, _ = model(**inputs)
    return logits.logsumexp(-1).mean()


def train_rank(rank: int, port: int, folder: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", world_size=2, rank=rank)
    try:
        model = tiny_model(video_encoder="r3d_18").train()  # image batches: the video encoder gets no gradient
        parallel = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
        for _ in range(2):  # the second step runs with the buckets DDP rebuilt after the first
            parallel.zero_grad()
            rank_loss(parallel, rank).backward()
        torch.save({name: p.grad for name, p in model.named_parameters() if p.grad is not None},
                   f"{folder}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_every_rank_gets_the_average_gradient(tmp_path):
    mp.spawn(train_rank, args=(free_port(), str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{rank}.pt") for rank in (0, 1)]
    single = []
    for rank in (0, 1):
        model = tiny_model(video_encoder="r3d_18").train()
        rank_loss(model, rank).backward()
        single.append({name: p.grad for name, p in model.named_parameters() if p.grad is not None})
    assert set(ranks[0]) == set(ranks[1]) == set(single[0])
    assert not any("embed_videos" in name for name in ranks[0])
    shared = "encoder.embed_tokens.weight"  # sparse rows from the lookups, dense from the output projection
    assert shared in ranks[0] and not ranks[0][shared].is_sparse
    for name, gradient in ranks[0].items():
        assert torch.equal(gradient, ranks[1][name]), name
        average = (single[0][name] + single[1][name]) / 2
        assert torch.allclose(gradient, average, atol=1e-6), name
    assert not torch.allclose(single[0][shared], single[1][shared])  # the ranks' batches really differ
