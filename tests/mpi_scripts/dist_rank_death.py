"""Run under mpirun -n 2: one rank fails before a collective; the job must end, naming the rank.

argv[1]: "exit0" (os._exit(0), silent death), "exit3" (os._exit(3)), "raise" (an exception),
         "hang" (rank 1 never reaches the collective: the survivors' timeout must fire).
"""
import os
import sys
import time

import torch

from meshgnn.distributed import abort_on_exception, init_distributed

mode = sys.argv[1]
dist = init_distributed(timeout_s=float(sys.argv[2]) if len(sys.argv) > 2 else 60)
with abort_on_exception(dist):
    x = torch.ones(3)
    dist.allreduce_(x)  # a first collective everybody reaches
    if dist.rank == 1:
        print(f"FAIL_AT {time.time():.3f}", flush=True)  # lets the test time the tear-down, not the start-up
        if mode == "exit0":
            os._exit(0)
        if mode == "exit3":
            os._exit(3)
        if mode == "raise":
            raise RuntimeError("boom on purpose")
        if mode == "hang":
            time.sleep(600)
    dist.allreduce_(x)
    print("UNREACHABLE: collective completed without rank 1", flush=True)
dist.finalize()
