"""The live-bytes tracker under FSDP2 (``fully_shard``): one rank, gloo, CPU, a world of one.

FSDP2's parameters, gradients and Adam state are DTensors: wrapper tensors whose own untyped storage
holds no data but reports the *global* byte size. The tracker used to count those wrappers, an extra
unsharded model copy that never died (283 MiB counted at a step's start of a 2-rank burst whose
visible tensors summed to 113 MiB). It also has to follow ``UntypedStorage.resize_``, which FSDP2's
``alloc_storage`` / ``free_storage`` (``_fsdp_param.py``) use to gather and free unsharded parameters.
The check: after forward, backward, the optimizer step and ``zero_grad``, the tracker's live bytes
equal the bytes of every storage Python can reach (each DTensor through its local shard).
"""

from __future__ import annotations

import gc

import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")


def visible_storages() -> dict[int, int]:
    """Every distinct storage behind a tensor the garbage collector can see (DTensors by their local
    shard): StorageImpl address -> bytes."""
    seen: dict[int, int] = {}
    gc.collect()
    for obj in gc.get_objects():
        if not isinstance(obj, torch.Tensor):
            continue
        t = getattr(obj, "_local_tensor", obj)
        if t.is_meta or type(t).__name__ == "FakeTensor":
            continue
        st = t.untyped_storage()
        seen[st._cdata] = st.nbytes()
    return seen


@pytest.fixture
def world_of_one(tmp_path):
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("needs torch.distributed with gloo")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.mark.filterwarnings("ignore::FutureWarning")  # gc.get_objects touches deprecated torch attributes
def test_tracker_matches_visible_storages_under_fully_shard(world_of_one):
    from torch.distributed.fsdp import fully_shard

    from refplan.harness.sharded import follow_storage_resize
    from refplan.harness.tracker import LiveBytes

    before = set(visible_storages())  # tensors other tests left alive: not the tracker's

    def visible_bytes() -> int:
        return sum(n for k, n in visible_storages().items() if k not in before)

    tr = LiveBytes()
    with tr, follow_storage_resize(tr):
        torch.manual_seed(0)
        model = torch.nn.Sequential(*[torch.nn.Linear(128, 128) for _ in range(3)])
        for layer in model:
            fully_shard(layer)
        fully_shard(model)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        x = torch.randn(4, 128)
        weights = sum(p.numel() * 4 for p in model.parameters())
        assert tr.live - visible_bytes() == 0, "after fully_shard"
        live = tr.live
        tr.register_module(model)  # as the harness does with TRL's prepared reference: already counted
        assert tr.live == live
        for step in range(2):
            loss = model(x).square().mean()
            assert tr.live == visible_bytes(), f"step {step}: after forward"
            loss.backward()
            del loss
            assert tr.live == visible_bytes(), f"step {step}: after backward"
            opt.step()
            assert tr.live == visible_bytes(), f"step {step}: after the optimizer step"
            opt.zero_grad()
            assert tr.live == visible_bytes(), f"step {step}: after zero_grad"
        # what stays: sharded weights and two Adam moments (step counters are scalars), the input
        assert tr.live - x.nbytes - weights * 3 < 1024
