"""Peak memory of one scoring forward at 8192 tokens with attention's general path taking its chunks largest first
(the default where no running sum needs query order) or in query order, one process each (issue 35, eighth session):
`OMP_NUM_THREADS=1 PYTHONPATH=src python results/benchmarks/mechanisms_35/chunk_order_peak.py alibi+dape query|largest`."""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "scripts"))
from benchlib import config, proc_status_mib, reset_peak

import lenx.attention as A
from lenx.lit import build_model

torch.set_num_threads(1)
scheme, order = sys.argv[1], sys.argv[2]
if order == "query":
    A.reversed = lambda x: x  # the module's global shadows the builtin: chunks in query order
base, *mods = scheme.split("+")
cfg = {**config(base, 512, 1, 1), **({"attn": {m: True for m in mods}} if mods else {})}
torch.manual_seed(0)
model = build_model(cfg).eval()
x = torch.randint(0, 8192, (1, 8192))
with torch.no_grad():
    model(x[:, :2048])
    model(x)
    base_mib = reset_peak(torch.device("cpu"))
    model(x)
    peak = proc_status_mib("VmHWM")
    print(scheme, order, f"added MiB {peak - base_mib:.0f}", f"peak {peak:.0f}")
