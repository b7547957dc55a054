"""The per-rank training function TorchDistributor runs: gloo process group, DDP, the epoch loop.

Every rank reads its own shard (`data.load_shards`), builds the recipe's network after
``torch.manual_seed(seed)`` (DDP also broadcasts rank 0's initial weights), then trains with Adam
on the recipe's mini-batches. DDP averages the gradients of every step over the ranks, so every
rank applies the same update and the weights stay identical, bit for bit. One process trains
without the DDP wrapper: averaging over one rank is the identity, and the wrapper would still copy
every gradient, dense embedding tables included, through its buckets at each step.

Adam is PyTorch's fused kernel: one pass over each parameter per step, where the default CPU
implementation makes several. The embedding models' gradients are dense (every row of the
tables, mostly zeros), so at MovieLens-10M's shape the optimizer step was most of a GMF step.
Fused and unfused Adam compute the same update; their floats differ in rounding only.

Equal steps: DDP needs every rank in every all-reduce, and hash shards differ in size by a few
rows. Each epoch the ranks agree on the largest batch count; a rank that runs out repeats its
first batch with the loss multiplied by 0 (a zero gradient in the average), so each training
row is used exactly once per epoch and every rank's optimizer sees the same averaged gradients.

Determinism: the same seed and world size give the same weights bit for bit on CPU: seeded
initialisation, batches drawn from ``np.random.default_rng([seed, epoch, rank])``, dropout from
a per-rank torch seed, ``torch.use_deterministic_algorithms(True)``, a fixed thread count, and
gloo's reductions, whose order depends only on the world size.

Large tensors come from the heap while a rank trains (`heap_for_large_tensors`): glibc serves an
allocation above 32 MB from a fresh mmap and unmaps it when freed, so each step paid page faults
for every catalogue-sized gradient, logit and activation (at ML-25M's 59,047 items a Mult-VAE step
went from 128 to 86 ms with the heap). The settings are restored when training ends.

Every rank returns the same payload (weights as safetensors bytes, the history, the best epoch,
the factor matrices of dot-product recipes): the metrics are all-reduced and the weights are
identical, so it does not matter which rank's return value TorchDistributor keeps.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import socket
import time
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from recospark.models.neural import data, weights
from recospark.models.neural.job import ERROR_MARK, PROGRESS_EVERY_S, PROGRESS_MARK, TrainJob, epoch_line
from recospark.models.neural.recipe import Recipe, TrainShard

__all__ = ["heap_for_large_tensors", "metric_of", "train_rank"]


def metric_of(recipe: Recipe) -> tuple[str, bool]:
    """(validation metric name, lower is better) of a recipe."""
    name = getattr(recipe, "validation_metric", "rmse" if recipe.objective == "rating" else "ndcg")
    return name, name == "rmse"


def train_rank(job: TrainJob) -> dict[str, Any]:
    """Train on this rank (RANK, WORLD_SIZE from torchrun); on failure print the marker line and re-raise."""
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    try:
        return _train(job, rank, world)
    except BaseException as err:
        message = " ".join(str(err).split()) or "(no message)"
        print(f"{ERROR_MARK} rank={rank} {type(err).__name__}: {message[:1000]}", flush=True)
        raise


def _allreduce(values: list[float], op: dist.ReduceOp.RedOpType = dist.ReduceOp.SUM) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t, op=op)
    return [float(x) for x in t]


# glibc's mallopt parameters and their defaults
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_DEFAULT_TRIM_THRESHOLD, _DEFAULT_MMAP_MAX = 128 * 1024, 65536


@contextlib.contextmanager
def heap_for_large_tensors() -> Iterator[bool]:
    """Within: every allocation from the heap, and freed memory kept for reuse (yields whether it
    applies: glibc only); after: glibc's defaults, and the free heap returned to the system.

    >>> with heap_for_large_tensors() as applied:
    ...     x = bytearray(64 << 20)
    >>> isinstance(applied, bool)
    True
    """
    libc = ctypes.CDLL(None)
    mallopt, trim = getattr(libc, "mallopt", None), getattr(libc, "malloc_trim", None)
    if mallopt is None or trim is None:
        yield False
        return
    applied = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 1 << 30))
    try:
        yield applied
    finally:
        mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX)
        mallopt(_M_TRIM_THRESHOLD, _DEFAULT_TRIM_THRESHOLD)
        trim(0)


def _train(job: TrainJob, rank: int, world: int) -> dict[str, Any]:
    torch.set_num_threads(job.threads)
    torch.use_deterministic_algorithms(True)
    if not dist.is_initialized():
        dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        with heap_for_large_tensors():
            return _loop(job, rank, world)
    finally:
        dist.destroy_process_group()


def _loop(job: TrainJob, rank: int, world: int) -> dict[str, Any]:
    recipe, hp = job.recipe, job.hp
    seed, epochs, patience = int(hp["seed"]), int(hp["maxIter"]), int(hp["earlyStoppingRounds"])
    train, val = data.load_shards(job.rows_path, job.user_ids, job.item_ids, recipe.shard_by, rank, world)
    ranks: list[Any] = [None] * world  # where each rank ran: the model records it
    here = {
        "rank": rank,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "cwd": os.getcwd(),
        "rows": len(train.users),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),  # None: OpenMP's default (see `openmp_wait`)
    }
    dist.all_gather_object(ranks, here)
    torch.manual_seed(seed)
    net = recipe.build(hp, train.n_users, train.n_items)
    model = DistributedDataParallel(net) if world > 1 else net
    torch.manual_seed(seed * 1_000_003 + rank)  # dropout and other torch randomness: per rank, reproducible
    optimizer = torch.optim.Adam(model.parameters(), lr=float(hp["stepSize"]), fused=True)
    metric, lower_better = metric_of(recipe)
    history: list[dict[str, Any]] = []
    best_value: float | None = None
    best_state: dict[str, torch.Tensor] | None = None
    best_epoch, stale = 0, 0
    fit_started = last_line = time.monotonic()
    for epoch in range(epochs):
        started = time.monotonic()
        rng = np.random.default_rng([seed, epoch, rank])
        batches = list(recipe.batches(train, hp, epoch, rng))
        most, fewest = _allreduce([len(batches)], dist.ReduceOp.MAX)[0], _allreduce([len(batches)], dist.ReduceOp.MIN)[0]
        if fewest == 0:
            raise RuntimeError(
                f"a rank has no training batch in epoch {epoch + 1} (this rank: {len(train.users)} rows): "
                f"fewer rows or users than processes; lower numProcesses"
            )
        model.train()
        loss_sum, steps = 0.0, 0
        for step in range(int(most)):
            real = step < len(batches)
            batch = batches[step] if real else batches[0]
            optimizer.zero_grad()
            loss = recipe.loss(model, batch, hp, epoch)
            (loss if real else loss * 0.0).backward()
            optimizer.step()
            if real:
                loss_sum += float(loss.detach())
                steps += 1
        total_loss, total_steps = _allreduce([loss_sum, steps])
        value = _validate(recipe, net, train, val, hp) if job.validate else None
        seconds = _allreduce([time.monotonic() - started], dist.ReduceOp.MAX)[0]
        entry: dict[str, Any] = {"epoch": epoch + 1, "loss": total_loss / max(total_steps, 1), "seconds": round(seconds, 3)}
        if job.validate:
            entry.update({"metric": metric, f"val_{metric}": value})
        history.append(entry)
        now = time.monotonic()
        if rank == 0 and (epoch == 0 or epoch + 1 == epochs or now - last_line >= PROGRESS_EVERY_S):
            print(f"{PROGRESS_MARK} {epoch_line(recipe.name, entry, epochs, now - fit_started)}", flush=True)
            last_line = now
        if value is None or patience <= 0:
            best_epoch = epoch + 1
            continue
        if best_value is None or (value < best_value if lower_better else value > best_value):
            best_value, best_epoch, stale = value, epoch + 1, 0
            best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
        else:
            stale += 1
            if stale >= patience:
                if rank == 0:
                    print(f"{PROGRESS_MARK} {recipe.name}: early stopping after epoch {epoch + 1}, best epoch {best_epoch}", flush=True)
                break
    if best_state is not None:
        net.load_state_dict(best_state)
    net.eval()
    with torch.no_grad():
        factors = recipe.factors(net) if getattr(recipe, "dot_product", False) else None
    state = {k: v.detach().cpu().contiguous().numpy() for k, v in net.state_dict().items()}
    return {
        "weights": weights.to_bytes(state),
        "history": history,
        "best_epoch": best_epoch,
        "factors": None if factors is None else tuple(np.ascontiguousarray(m, dtype=np.float32) for m in factors),
        "ranks": ranks,
    }


def _validate(recipe: Recipe, net: torch.nn.Module, train: TrainShard, val: TrainShard, hp: Mapping[str, Any]) -> float | None:
    """The all-reduced validation metric of this epoch (None when no rank has a validation row)."""
    net.eval()
    with torch.no_grad():
        num, den = recipe.validation(net, train, val, hp) if len(val.users) else (0.0, 0.0)
    total_num, total_den = _allreduce([float(num), float(den)])
    if total_den <= 0:
        return None
    name, _ = metric_of(recipe)
    return math.sqrt(total_num / total_den) if name == "rmse" else total_num / total_den
