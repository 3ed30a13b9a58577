#!/usr/bin/env bash
# S2 part (a): every algorithm on a real 2-host testbed (root). See results/overlap-testbed.md.
set -u
cd "$(dirname "$0")/.."  # the repository root
S=.venv/bin/sgdlab
uptime
$S testbed up --hosts 2 --rate 400mbit >/dev/null || exit 1
trap '$S testbed down >/dev/null' EXIT
for seed in 0 1; do
for spec in "sync 1" "local 2" "overlap 2" "cocod 2" "local 8" "overlap 8"; do
  set -- $spec
  $S dist --algo $1 --tau $2 --world-size 2 --workload cnn-fmnist --optimizer sgd --lr 0.05 \
    --batch-size 32 --steps 160 --seed $seed --testbed --json 2>/tmp/tb_err.txt | tail -1 \
    | python3 -c "import json,sys; r=json.loads(sys.stdin.read()); print(json.dumps({k:r.get(k) for k in ['algo','tau','steps','wall_seconds','compute_seconds','comm_seconds','wait_seconds','hidden_fraction','metric_value']}))" || { echo FAIL $spec; tail -2 /tmp/tb_err.txt; }
done; done
uptime
