#!/usr/bin/env bash
# The LightGCN paper on Gowalla, on one GPU: d = 64, L = 3, lr 1e-3, batch 2048,
# lambda 1e-4, 1000 epochs, full-ranking recall@20 and ndcg@20 every 20 epochs
# (paper: 0.1830 / 0.1554). GPU time comes in short slots, so each call trains at
# most EPOCHS_PER_PIECE epochs and stops; the next call resumes from the
# checkpoint (exactly: same batches, same model), until all epochs are done.
#
#     bash tools/gpu_train_gowalla.sh [OUT] [EPOCHS_PER_PIECE]
#
# GOWALLA_DIR: a directory with train.txt and test.txt (default: the repository's
# copy in ../shared/data/gowalla; without one, the data set is downloaded).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-runs/gowalla-paper}"
PIECE="${2:-400}"
DATA="${GOWALLA_DIR:-../shared/data/gowalla}"
[ -f "$DATA/train.txt" ] || DATA=gowalla
RESUME=()
[ -f "$OUT/checkpoint.pt" ] && RESUME=(--resume)
python3 -m lightgcn_ext train --data "$DATA" --dim 64 --layers 3 --epochs 1000 \
  --batch-size 2048 --lr 1e-3 --reg 1e-4 --device cuda --eval-every 20 --patience 0 \
  --out "$OUT" --max-epochs-now "$PIECE" --no-progress "${RESUME[@]}"
