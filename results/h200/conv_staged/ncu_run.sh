set -u
mkdir -p /tmp/buildlogs; OUT_SAVE=$OUT; OUT=/tmp/buildlogs bash scripts/gpu.sh build || { cp /tmp/buildlogs/*.log $OUT_SAVE/ 2>/dev/null; exit 1; }; OUT=$OUT_SAVE
B=./build-gpu
for f in "bwd x4 A5" "fwd x4 A5" "bwd x4 LM"; do
  n=$(echo $f | tr ' ' '_')
  timeout 120 ncu --clock-control none -k regex:conv_ --launch-count 1 --section SpeedOfLight --section Occupancy --section WarpStateStats --section SchedulerStats --section LaunchStats \
    $B/fprnn bench --device cuda conv --filter "$f" --repeat 1 --warmup 0 > $OUT/ncu_$n.txt 2>&1; echo "$f rc=$?"
done
grep -E "Stall|Issue|Warp Cycles|Eligible|Achieved Occ|Duration|Registers|Throughput|Theoretical Occ|Block Limit" $OUT/ncu_bwd_x4_A5.txt | head -40
