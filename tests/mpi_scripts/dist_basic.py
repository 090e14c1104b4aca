"""Run under mpirun: init, all-reduce, allreduce_grads, object collectives, teardown. Prints 'OK rank R' on success."""
import sys

import torch

from meshgnn import ops
from meshgnn.distributed import abort_on_exception, gloo_threads, init_distributed

dist = init_distributed(timeout_s=30)
with abort_on_exception(dist):
    r, n = dist.rank, dist.size
    assert dist.local_rank == r and dist.local_size == n, (dist.local_rank, dist.local_size)  # one host
    assert torch.get_num_threads() >= 1

    # all-reduce: sum of rank-dependent tensors, in place
    x = torch.arange(5, dtype=torch.float64) * (r + 1)
    dist.allreduce_(x)
    expect = torch.arange(5, dtype=torch.float64) * sum(k + 1 for k in range(n))
    assert torch.equal(x, expect), (x, expect)

    # allreduce_grads: one bucket; result equals the sum of every rank's gradients
    torch.manual_seed(0)
    lin = torch.nn.Linear(4, 3).double()
    extra = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))  # grad None on every rank
    inputs = [torch.randn(6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(k)) for k in range(n)]
    lin(inputs[r]).pow(2).sum().backward()
    before = dist.bytes_allreduced
    dist.allreduce_grads(list(lin.parameters()) + [extra])
    ref = torch.nn.Linear(4, 3).double()
    ref.load_state_dict(lin.state_dict())
    ref.zero_grad()
    sum(ref(inputs[k]).pow(2).sum() for k in range(n)).backward()
    for p, q in zip(lin.parameters(), ref.parameters()):
        assert torch.allclose(p.grad, q.grad, rtol=1e-12, atol=1e-12), (p.grad, q.grad)
    assert torch.equal(extra.grad, torch.zeros(2, dtype=torch.float64))
    nbytes = 8 * (sum(p.numel() for p in lin.parameters()) + 2)
    assert dist.bytes_allreduced - before == nbytes, (dist.bytes_allreduced - before, nbytes)

    # object collectives
    obj = dist.broadcast_object({"seed": 7} if dist.is_root else None)
    assert obj == {"seed": 7}
    got = dist.gather_object(("rank", r))
    assert (got == [("rank", k) for k in range(n)]) if dist.is_root else got is None
    dist.barrier()

    # a custom op's first call imports torch._dynamo (and torch.distributed.nn) after init_process_group
    rowptr = torch.tensor([0, 2, 3])
    assert torch.equal(ops.segment_sum(torch.ones(3, 2), rowptr), torch.tensor([[2.0, 2.0], [1.0, 1.0]]))


assert gloo_threads(), "expected gloo worker threads while the group is up"
dist.finalize()
# finalize must have joined the group's worker threads: one still running at interpreter exit can free a tensor
# after finalization began and abort the rank (SIGABRT), failing a run that had succeeded
left = gloo_threads()
if left:
    print(f"FAIL rank {dist.rank}: gloo threads still running after finalize: {left}", file=sys.stderr, flush=True)
    sys.exit(1)
print(f"OK rank {dist.rank} size {dist.size} backend {dist.backend} threads {dist.threads}", flush=True)
