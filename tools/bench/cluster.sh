#!/usr/bin/env bash
# Cluster-mode benchmarks with a real etcd and release binaries; each part prints a markdown table.
#
#   tools/bench/cluster.sh [--ttls "3 10"] [--trials 2]
#
#   failover     two coordinators and one worker; a 300-step tiny job (33x128x64, 9 windows) is submitted to
#                the leader, which is SIGKILLed once 20 steps are done. Measured from the kill to the
#                follower's "elected leader" and "first step after resuming done" log lines, per lease TTL.
#   checkpoints  the same job, undisturbed, on one coordinator with --checkpoint-every 1 and 0 (alternating,
#                three runs each): the time per step with and without a checkpoint after every step.
set -euo pipefail
cd "$(dirname "$0")/../.."

ttls="3 10"
trials=2
while [ $# -gt 0 ]; do
  case "$1" in
    --ttls) ttls="$2"; shift 2 ;;
    --trials) trials="$2"; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done

command -v etcd >/dev/null || { echo "etcd is missing: apt-get install etcd-server" >&2; exit 1; }
cargo build --release --quiet
bin=target/release/patchwork
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
epoch() { date -d "$1" +%s.%N; }
# The timestamp of the first log line in $1 that contains $2.
logged_at() { grep -m1 -F "$2" "$1" | cut -d' ' -f1; }
wait_for() { # FILE TEXT SECONDS
  for _ in $(seq 1 $(( $3 * 10 ))); do grep -qF "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
  echo "timed out waiting for '$2' in $1" >&2; exit 1
}

cport=$(free_port); pport=$(free_port)
etcd --name bench --data-dir "$work/etcd" --listen-client-urls "http://127.0.0.1:$cport" \
  --advertise-client-urls "http://127.0.0.1:$cport" --listen-peer-urls "http://127.0.0.1:$pport" \
  --initial-advertise-peer-urls "http://127.0.0.1:$pport" --initial-cluster "bench=http://127.0.0.1:$pport" \
  >"$work/etcd.log" 2>&1 &
pids+=($!)
endpoint="http://127.0.0.1:$cport"
sleep 2

job_args=("a blue square moving left" --frames 33 --width 128 --height 64 --steps 300 --seed 7)
export RUST_LOG=info NO_COLOR=1

# Starts a coordinator; prints "PID ADDRESS".
coordinator() { # NAME TTL EXTRA...
  local name=$1 ttl=$2; shift 2
  "$bin" coordinator --listen 127.0.0.1:0 --data-dir "$work/data" --etcd "$endpoint" --lease-ttl "$ttl" "$@" \
    >"$work/$name.out" 2>"$work/$name.log" &
  local pid=$!
  pids+=("$pid")
  wait_for "$work/$name.out" "listening on" 30
  echo "$pid http://$(awk '{print $NF}' "$work/$name.out")"
}

step_of() { # ADDRESS JOB
  "$bin" jobs --coordinator "$1" 2>/dev/null |
    awk -v id="$2" '$1 == id { for (i = 2; i <= NF; i++) if ($i ~ /^[0-9]+\/[0-9]+$/) { split($i, s, "/"); print s[1]; exit } }' 
}

echo "| lease TTL | trial | kill -> elected (s) | kill -> first step of the new leader (s) |"
echo "| --- | --- | --- | --- |"
for ttl in $ttls; do
  for trial in $(seq 1 "$trials"); do
    tag="t${ttl}-$trial"
    read -r a_pid a_addr < <(coordinator "a-$tag" "${ttl}s" --checkpoint-every 1)
    sleep 0.5
    read -r b_pid b_addr < <(coordinator "b-$tag" "${ttl}s" --checkpoint-every 1)
    "$bin" worker --etcd "$endpoint" --lease-ttl "${ttl}s" --listen 127.0.0.1:0 >"$work/w-$tag.out" 2>"$work/w-$tag.log" &
    w_pid=$!; pids+=("$w_pid")
    wait_for "$work/a-$tag.log" "worker registered" 30
    job=$("$bin" submit --coordinator "$a_addr" "${job_args[@]}")
    until [ "$(step_of "$a_addr" "$job")" -ge 20 ] 2>/dev/null; do sleep 0.05; done
    killed=$(date +%s.%N)
    kill -9 "$a_pid"
    wait_for "$work/b-$tag.log" "first step after resuming done" $(( ttl * 3 + 30 ))
    elected=$(epoch "$(logged_at "$work/b-$tag.log" "elected leader")")
    stepped=$(epoch "$(logged_at "$work/b-$tag.log" "first step after resuming done")")
    printf "| %ss | %s | %.2f | %.2f |\n" "$ttl" "$trial" "$(echo "$elected - $killed" | bc)" "$(echo "$stepped - $killed" | bc)"
    "$bin" watch --coordinator "$b_addr" "$job" >/dev/null 2>&1 || true
    kill -9 "$b_pid" "$w_pid" 2>/dev/null || true
    # The next trial's first coordinator must win the election: wait for the dead ones' leases.
    sleep $(( ttl + 1 ))
  done
done
echo

echo "| checkpoint every | run | steps | job time (s) | per step (ms) |"
echo "| --- | --- | --- | --- | --- |"
declare -A total=([0]=0 [1]=0)
for run in 1 2 3; do
  for every in 1 0; do
    tag="c$every-$run"
    read -r c_pid c_addr < <(coordinator "$tag" 3s --checkpoint-every "$every")
    "$bin" worker --etcd "$endpoint" --lease-ttl 3s --listen 127.0.0.1:0 >"$work/w-$tag.out" 2>"$work/w-$tag.log" &
    w_pid=$!; pids+=("$w_pid")
    wait_for "$work/$tag.log" "worker registered" 30
    start=$(date +%s.%N)
    "$bin" submit --coordinator "$c_addr" --wait "${job_args[@]}" >/dev/null 2>&1
    took=$(echo "$(date +%s.%N) - $start" | bc)
    printf "| %s | %s | 300 | %.2f | %.2f |\n" "$every" "$run" "$took" "$(echo "$took * 1000 / 300" | bc -l)"
    total[$every]=$(echo "${total[$every]} + $took" | bc)
    kill "$c_pid" "$w_pid" 2>/dev/null || true
    sleep 1
  done
done
printf "\ncheckpoint after every step: %.1f%% of the step time (%.2f s vs %.2f s over 3 runs)\n" \
  "$(echo "(${total[1]} - ${total[0]}) * 100 / ${total[0]}" | bc -l)" "${total[1]}" "${total[0]}"
echo "$(nproc) cores, $(date -u +%F)"
