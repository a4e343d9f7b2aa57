#!/usr/bin/env bash
# bench/gpu_check.sh on a lent GPU machine, whose call returns at most 8 files from $OUT and may be cut off
# at its time limit: the check runs in WORK (its 20+ GB of models and checkpoints never reach $OUT), and
# every 15 s, and at the end, summary.md, results.tsv, env.txt and logs.tar.gz are copied into DEST.
#
#   bash bench/gpu_check_lent.sh "$OUT" [gpu_check.sh options...]      # e.g. --wheels .whl, --only decode
#
# One device call (docs/scaling.md): run(command='bash bench/gpu_check_lent.sh "$OUT"', timeout_s=600).
set -u
[ $# -ge 1 ] || { echo "usage: bash bench/gpu_check_lent.sh DEST [gpu_check.sh options]" >&2; exit 2; }
DEST=$1; shift
WORK=${GPU_CHECK_WORK:-/tmp/gpu-check-$$}
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$DEST" || exit 2
mirror() {
  for f in summary.md results.tsv env.txt; do [ -f "$WORK/$f" ] && cp "$WORK/$f" "$DEST/$f.tmp" && mv "$DEST/$f.tmp" "$DEST/$f"; done
  (cd "$WORK" 2>/dev/null && ls *.log >/dev/null 2>&1 && tar czf "$DEST/logs.tar.gz.tmp" *.log && mv "$DEST/logs.tar.gz.tmp" "$DEST/logs.tar.gz")
}
bash "$HERE/gpu_check.sh" "$WORK" "$@" &
PID=$!
while kill -0 $PID 2>/dev/null; do
  for _ in $(seq 15); do kill -0 $PID 2>/dev/null || break; sleep 1; done  # returns as soon as the check ends
  mirror
done
wait $PID
RC=$?
mirror
cat "$DEST/summary.md" 2>/dev/null
exit $RC
