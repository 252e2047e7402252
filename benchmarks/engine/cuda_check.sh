#!/usr/bin/env bash
# explain-dataset's CUDA path, checked and measured in one command on a lent
# GPU machine (docs/running-at-scale.md, "Measured").
#
# The device machine has torch, torchvision and scikit-image but not captum,
# and fetches nothing; the ORL faces stay beside the checkout. Here, once:
#     echo /.whl/ >> .git/info/exclude; echo /.orl/ >> .git/info/exclude
#     python3 -m pip download --no-deps captum==0.9.0 -d .whl
#     cp -r ../shared/data/orl_faces .orl
# then, through the device tool, carrying .whl and .orl:
#     bash benchmarks/engine/cuda_check.sh
#
# Under $OUT it writes:
#   tests.txt            the fast tests of the runner on that machine's torch;
#   cuda_vs_cpu.txt      the same run (Grad-CAM, Saliency, LRP on 32 pairs) on
#                        the GPU and on its CPU: every row on both, and the
#                        largest relative difference of the scores and map
#                        statistics per method (cuDNN's TF32 convolutions
#                        alone make them differ);
#   dataset_runs_cuda.md a plain process against the same under torchrun (the
#                        nccl path), Grad-CAM, RISE and four methods in one
#                        run, the tables compared (benchmarks/engine/dataset_runs.py).
#
# DEVICE=cpu PAIRS=8 runs the same steps on a CPU, to check the script.
set -euo pipefail
DEVICE=${DEVICE:-cuda}
PAIRS=${PAIRS:-256}
ORL=${ORL:-.orl}
OUT=${OUT:-/tmp/cuda_check}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
if [ -d .whl ]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 MPLBACKEND=Agg
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')" | tee "$OUT/tests.txt"

"$PY" -m pytest -q -m "not slow" tests/test_runs.py tests/test_image_store.py 2>&1 | tail -5 | tee -a "$OUT/tests.txt" || true

WEIGHTS="$OUT/resnet18.pt"
"$PY" -c "import torch, torchvision; torch.manual_seed(0); torch.save(torchvision.models.resnet18().state_dict(), '$WEIGHTS')"

SMALL=$(( PAIRS < 32 ? PAIRS : 32 ))
for dev in cpu "$DEVICE"; do
    rm -rf "$OUT/run-$dev"
    "$PY" -m captum_similarity explain-dataset "$ORL" --pairs "same:$((SMALL / 2)),different:$((SMALL / 2))" \
        --model torchvision.models:resnet18 --weights "$WEIGHTS" --methods gradcam,saliency,lrp \
        --device "$dev" --out "$OUT/run-$dev" > "$OUT/run-$dev.log" 2>&1
done
"$PY" - "$OUT/run-cpu/table.csv" "$OUT/run-$DEVICE/table.csv" <<'EOF' | tee "$OUT/cuda_vs_cpu.txt"
import sys
from collections import defaultdict

from captum_similarity.runs import read_table

cpu, dev = (read_table(p) for p in sys.argv[1:3])
keys = [(r["pair"], r["method"], r["status"]) for r in cpu]
assert keys == [(r["pair"], r["method"], r["status"]) for r in dev], "other rows on the two devices"
worst = defaultdict(float)
for a, b in zip(cpu, dev):
    for column in a:
        if column == "score" or column.startswith(("map1_", "map2_")):
            if a[column] is None or b[column] is None:
                continue
            u, v = float(a[column]), float(b[column])
            worst[a["method"]] = max(worst[a["method"]], abs(u - v) / max(abs(u), abs(v), 1e-12))
print(f"{len(cpu)} rows, the same pairs, methods and statuses on both devices "
      f"({sum(r['status'] == 'ok' for r in cpu)} ok)")
for method, value in worst.items():
    print(f"{method}: largest relative difference of the scores and map statistics {value:.1e}")
EOF

"$PY" benchmarks/engine/dataset_runs.py --orl "$ORL" --model torchvision.models:resnet18 \
    --weights "$WEIGHTS" --device "$DEVICE" --layouts 1x8 L1x8 --compare \
    --configs gradcam rise several --gradcam-pairs "$PAIRS" --rise-pairs $(( PAIRS / 16 > 1 ? PAIRS / 16 : 2 )) \
    --several-pairs $(( PAIRS / 4 )) --repeats 1 --out "$OUT/dataset_runs_$DEVICE.md"
