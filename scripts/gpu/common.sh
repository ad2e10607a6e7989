# Sourced by the GPU launchers: run trainings side by side on one card for T seconds.
export OMP_NUM_THREADS=2 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
T=${T:-540}
RUN_ARGS=${RUN_ARGS:-}  # flags every run gets (e.g. --no-checkpoint)
mkdir -p runs

# run NAME ARGS...: train.py in the background into runs/NAME, stopped by timeout's SIGTERM after T s
# (the run finishes its batch and writes a checkpoint first; with --no-checkpoint it dies at once);
# resumes runs/NAME when it holds a checkpoint, so calling a launcher again on the same warm machine
# continues every run.
run() {
  local name=$1; shift
  local resume=""; [ -d runs/$name/checkpoint ] && resume="--resume"
  timeout $T python3 train.py --device cuda --no-progress --out runs/$name $resume $RUN_ARGS "$@" \
    >> runs_$(echo $name | tr / _).log 2>&1 &
}

# finish TARBALL: wait for the runs, print their last epochs, pack metrics, configs and plots into $OUT.
finish() {
  wait
  df -h . | tail -1
  for f in runs_*.log; do echo "== $f"; grep "^epoch\|^resumed" $f | tail -3; grep -i "error" $f | tail -2; done
  tar czf "$OUT/$1" runs/*/*/metrics.jsonl runs/*/*/config.json runs/*/*/*.png
}
