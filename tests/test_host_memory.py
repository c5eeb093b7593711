"""utils/host_memory: with the settings applied, a freed large buffer is reused by the next
allocation of that size without faulting its pages in again (what each XLA:CPU step's
temporaries need); glibc's defaults fault them in every time; WRISTMIR_MALLOC=system opts out.
Each case runs in a fresh process (the settings are per process and never undone)."""

import json
import os
import subprocess
import sys

import pytest

SCRIPT = r"""
import json, resource, sys
import numpy as np
from wristmir_jax.utils.host_memory import keep_freed_memory

state = keep_freed_memory() if sys.argv[1] == "keep" else {"applied": False}

def faults_of_one_buffer():
    r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    a = np.empty(512 << 20, np.uint8)
    a.fill(1)
    del a
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0

first = faults_of_one_buffer()
print(json.dumps({"state": state, "first": first, "second": faults_of_one_buffer()}))
"""

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")


def run(mode: str, **env) -> dict:
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], check=True, capture_output=True,
                         text=True, env={**os.environ, **env})
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_freed_buffer_is_reused_without_page_faults():
    kept, system = run("keep"), run("default")
    assert kept["state"]["applied"] is True
    # 512 MiB is 131072 pages of 4 KiB (256 if the kernel backs it with 2 MiB pages)
    assert system["first"] >= 200 and system["second"] >= 200
    assert kept["first"] >= 200
    assert kept["second"] <= 16, kept


def test_opt_out_keeps_glibc_defaults():
    r = run("keep", WRISTMIR_MALLOC="system")
    assert r["state"] == {"applied": False, "reason": "WRISTMIR_MALLOC=system"}
    assert r["second"] >= 200
