"""meshgnn.memory: glibc keeps freed memory when asked, and a rollout that asks computes exactly the same."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from meshgnn.memory import huge_pages_supported
from meshgnn.train import TrainConfig, train

CODE = """
import ctypes, ctypes.util, json, sys
from meshgnn.memory import keep_freed_memory
ok = keep_freed_memory()
import torch
import resource
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):            # 64 MiB tensors: above glibc's default mmap threshold
    t = torch.ones(16 * 2**20)
    del t
print(json.dumps({"ok": ok, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def _run_json(code: str) -> dict:
    """Run ``code`` in a fresh interpreter (no inherited THP_MEM_ALLOC_ENABLE); its last stdout line as JSON."""
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def _faults(keep: bool) -> tuple[bool, int]:
    res = _run_json(CODE if keep else CODE.replace("ok = keep_freed_memory()", "ok = False"))
    return res["ok"], res["faults"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_freed_memory_is_reused_instead_of_faulted_in_again():
    ok, kept = _faults(True)
    _, fresh = _faults(False)
    assert ok
    # without it every 64 MiB tensor maps fresh zero pages (16k faults each: 328k); with it freed pages are mostly
    # reused (measured here over 7 runs: 115k-164k faults, so a 2.0-2.9x margin; the bound leaves room for that)
    assert fresh > 1.5 * kept, (fresh, kept)


def test_rollout_with_malloc_cache_is_identical(box_dataset, tmp_path):
    run = train(TrainConfig(dataset=str(box_dataset), out=str(tmp_path / "run"), steps=2, layers=2, latent=16,
                            hidden_layers=1, progress=False))
    outs = []
    for flag in ("false", "true"):
        out = tmp_path / f"roll_{flag}"
        p = subprocess.run([sys.executable, "-m", "meshgnn.cli", "rollout", run["checkpoint"], str(box_dataset),
                            "--steps", "4", "--render", "false", "--progress", "false", "--malloc-cache", flag,
                            "--out", str(out)], capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr
        outs.append((out / "rmse.csv").read_text())
    assert outs[0] == outs[1]


HUGE = """
import json, os, resource, sys
{setup}
import torch
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
t = torch.empty(64 * 2**20)    # 256 MiB, touched once
t.fill_(1.0)
print(json.dumps({{"on": on, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}}))
"""


def _touch_faults(setup: str) -> tuple[bool, int]:
    res = _run_json(HUGE.format(setup=setup))
    return res["on"], res["faults"]


@pytest.mark.skipif(not huge_pages_supported(),
                    reason="needs Linux transparent huge pages (mode always or madvise)")
def test_huge_pages_cut_first_touch_faults():
    """enable_huge_pages() before torch loads: touching a fresh 256 MiB tensor faults a few hundred times (2 MiB
    pages) instead of ~65k (4 KiB pages); THP_MEM_ALLOC_ENABLE=0 in the environment keeps it off (control)."""
    on, huge = _touch_faults("from meshgnn.memory import enable_huge_pages\non = enable_huge_pages()")
    off_on, small = _touch_faults("os.environ['THP_MEM_ALLOC_ENABLE'] = '0'\n"
                                  "from meshgnn.memory import enable_huge_pages\non = enable_huge_pages()")
    assert on and not off_on
    assert small > 60_000, small          # 65,536 pages of 4 KiB
    assert huge * 8 < small, (huge, small)


def test_huge_pages_not_claimed_after_torch_loaded():
    import torch  # noqa: F401 - loaded, so the allocator has already read its setting
    from meshgnn.memory import enable_huge_pages
    assert enable_huge_pages() is False


# ------------------------------------------------------------------------------------------------ allocator
def test_allocator_choice_and_its_refusals(monkeypatch):
    from meshgnn import memory

    assert memory.allocator_env("system", {}) == ("system", None)
    assert memory.allocator_env("jemalloc", {"MESHGNN_ALLOCATOR_ACTIVE": "jemalloc"}) == ("jemalloc", None)
    with pytest.raises(ValueError, match="--allocator 'bogus'"):
        memory.allocator_env("bogus", {})
    monkeypatch.setattr(memory, "find_allocator", lambda name: None)
    assert memory.allocator_env("auto", {}) == ("system", None)          # auto: nothing installed -> glibc
    with pytest.raises(ValueError, match="--allocator tcmalloc: libtcmalloc not found"):
        memory.allocator_env("tcmalloc", {})
    monkeypatch.setattr(memory, "find_allocator", lambda name: f"/opt/lib{name}.so.2" if name == "tcmalloc" else None)
    name, env = memory.allocator_env("auto", {"LD_PRELOAD": "/x/libfoo.so"})
    assert name == "tcmalloc" and env["LD_PRELOAD"] == "/opt/libtcmalloc.so.2:/x/libfoo.so"
    assert env["MESHGNN_ALLOCATOR_ACTIVE"] == "tcmalloc" and "MALLOC_CONF" not in env
    assert memory.allocator_env("auto", {"LD_PRELOAD": "/opt/libtcmalloc.so.2"}) == ("tcmalloc", None)


@pytest.mark.skipif(not __import__("meshgnn.memory").memory.find_allocator("jemalloc"),
                    reason="libjemalloc not installed (apt-get install libjemalloc2)")
def test_cli_reexecutes_with_jemalloc_and_records_it(box_dataset, tmp_path):
    """``meshgnn train`` runs on jemalloc by default (the process maps it; run.json says so); ``--allocator
    system`` does not; both train the same model bit for bit (the allocator changes no arithmetic)."""
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "MESHGNN_ALLOCATOR_ACTIVE",
                                                            "MESHGNN_ALLOCATOR")}
    losses = {}
    for choice in ("auto", "system", "budget"):     # budget: auto with --memory-budget -> glibc
        out = tmp_path / choice
        extra = ["--memory-budget", "8"] if choice == "budget" else ["--allocator", choice]
        p = subprocess.run([sys.executable, "-m", "meshgnn.cli", "--debug", "train", str(box_dataset), "--out",
                            str(out), "--steps", "2", "--layers", "2", "--latent", "16", "--hidden-layers", "1",
                            "--val-every", "0", "--progress", "false", *extra],
                           capture_output=True, text=True, timeout=300, env=env)
        assert p.returncode == 0, p.stderr
        want = "jemalloc" if choice == "auto" else "system"
        assert f"allocator: {want}" in p.stderr
        assert json.loads((out / "run.json").read_text())["allocator"] == want
        losses[choice] = (out / "train_log.csv").read_text().splitlines()[-1].split(",")[1]
    assert losses["auto"] == losses["system"]
