#!/usr/bin/env bash
# The short GPU check for a session that is lent an NVIDIA machine (the device tool; never CI, never
# part of the suite). Its image has CUDA 13 torch but no vLLM and no network, so it checks what fits
# there, each step on its own (a failing step is logged, the next one runs):
#   1. nvidia-smi, parsed as tests/node/test_gpu.py parses it, against the roles' driver minimum;
#   2. torch's CUDA major against the pinned set's (nvidia_driver_cuda_major);
#   3. the UVM device node and nvidia-modprobe the serving units rely on;
#   4. LMCache 0.5.6's wheel (carried in .whl/, cp312): its CUDA extension loads against the
#      image's torch, and its device registry picks the transfer mode for a real CUDA tensor.
# Prepare here (once):
#   echo /.whl/ >> .git/info/exclude
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 -d .whl lmcache==0.5.6
# Run: the device tool's run with command "bash tests/gpu/device_check.sh", carry [".whl"],
# timeout_s 420. It writes $OUT/device_check.log; record what it showed in the issue's note.
set -u
exec > >(tee "${OUT:-/tmp}/device_check.log") 2>&1
step() { printf '\n== %s\n' "$*"; }

step "1. nvidia-smi (driver branch vs roles/nvidia_driver)"
nvidia-smi --query-gpu=name,driver_version,persistence_mode --format=csv,noheader
python3 - <<'PY'
import subprocess, yaml
v = yaml.safe_load(open("roles/nvidia_driver/vars/main.yml"))
d = yaml.safe_load(open("roles/nvidia_driver/defaults/main.yml"))
need = v["nvidia_driver_min_branch"][d["nvidia_driver_cuda_major"]]
out = subprocess.check_output(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], text=True)
branch = int(out.splitlines()[0].split(".")[0])
print(f"driver branch {branch}, CUDA {d['nvidia_driver_cuda_major']} needs >= {need}:", "ok" if branch >= need else "TOO OLD")
PY

step "2. torch's CUDA"
python3 -c "import torch; print(torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available(), torch.cuda.get_device_name(0))"

step "3. UVM device node, nvidia-modprobe"
ls -l /dev/nvidia* 2>&1
command -v nvidia-modprobe && ls -l "$(command -v nvidia-modprobe)"

step "4. LMCache 0.5.6 on this GPU"
python3 -m venv --system-site-packages /tmp/lmv && /tmp/lmv/bin/pip install -q --no-deps --no-index .whl/lmcache-0.5.6-*.whl
/tmp/lmv/bin/python - <<'PY'
import torch
try:
    import lmcache.c_ops  # noqa: F401  the CUDA extension, built against torch 2.13
    print("lmcache.c_ops loaded")
except Exception as e:
    print("lmcache.c_ops failed:", type(e).__name__, e)
from lmcache.v1.platform._device_detect import get_device_spec
spec = get_device_spec("cuda")
print("LMCache sees CUDA:", spec.is_available(), "; auto resolves to", spec.default_mp_transfer_mode().value)
from types import SimpleNamespace
from lmcache.v1.multiprocess.transfer_context.worker_transfer import create_transfer_context
kv = {"layer0": torch.zeros(2, 16, 8, 64, device="cuda", dtype=torch.bfloat16)}
try:
    ctx = create_transfer_context(kv, instance_id=1, req_client=SimpleNamespace())
    print("transfer context for a CUDA KV cache:", type(ctx).__name__)
except Exception as e:
    print("transfer context failed:", type(e).__name__, e)
PY
