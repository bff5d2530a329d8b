#!/usr/bin/env bash
# Emulated hosts on one machine: HOSTS network namespaces, each with its own interface and address, joined by veth
# pairs through a bridge, each host's link capped with tc tbf, and launch/multinode.sh (torchrun c10d) run in every
# namespace. Root only (namespaces, veth, tc); without root it prints why and "skipped", and exits 0.
#   launch/netns_hosts.sh HOSTS PROCS_PER_HOST RATE [decnode.run flags...]
#   launch/netns_hosts.sh 2 1 100mbit --k 1 --iterations 3 --out /tmp/run
# HOSTS: 2-4. RATE: a tc rate (100mbit, 1gbit, ...) applied to each host's link in both directions, or "none".
# tbf limits bandwidth only: this kernel has no netem, so latency and jitter are the veth's own (tens of µs).
# Everything lives in namespaces named dn-TAG-* (TAG: $NETNS_TAG or this script's pid): the hosts dn-TAG-h0...,
# and the switch dn-TAG-sw holding the bridge decnode-br0, so the machine's own network is never touched and
# only the namespaces talk (addresses $NETNS_SUBNET.1... /24, default 10.213.7.0/24, no route out). All of it
# is deleted on exit, failure or signal. Host i is named decnode-hI (its own UTS namespace). The run directory
# must be shared: namespaces share the filesystem, so it is. Each host gets its own share of the cores this script
# may use (taskset: an equal, disjoint set per host), as a real machine has its own; decnode divides a host's
# cores among that host's processes. More hosts than cores: each host gets one core, shared with other hosts.
# A straggler, slowed for real: HOST_SLOWDOWN=I:F[,I:F...] gives host I a CPU quota of 1/F of its cores (a cgroup,
# 10 ms period), so its work takes F times as long; `net.speed` is the same factor in a profile.
# Env: PYTHON (default REPO/.venv/bin/python, else python3), BURST (tbf bucket, bytes; default 1 ms at RATE,
# at least 16000), NETNS_TAG, NETNS_SUBNET, RDZV_PORT (29500), HOST_SLOWDOWN, GLOO_PING (1: also time a gloo message),
# NET_COUNTERS=FILE (each host's eth0 kernel counters just before the job starts and after it ends, into FILE).
set -euo pipefail
me=$(basename "$0")
if (($(id -u) != 0)); then
    echo "$me: skipped: needs root to create network namespaces, veth pairs and tc qdiscs"
    exit 0
fi
for tool in ip tc unshare taskset; do
    command -v "$tool" >/dev/null || { echo "$me: skipped: '$tool' (iproute2, util-linux) is not installed"; exit 0; }
done
if (($# < 3)); then echo "usage: $me HOSTS PROCS_PER_HOST RATE [decnode.run flags...]" >&2; exit 2; fi
HOSTS=$1; PER_HOST=$2; RATE=$3; shift 3
[[ $HOSTS =~ ^[2-4]$ ]] || { echo "$me: HOSTS must be 2, 3 or 4, got '$HOSTS'" >&2; exit 2; }
[[ $PER_HOST =~ ^[1-9][0-9]*$ ]] \
    || { echo "$me: PROCS_PER_HOST must be a positive integer, got '$PER_HOST'" >&2; exit 2; }
if [[ $RATE != none ]]; then
    [[ $RATE =~ ^([0-9]+(\.[0-9]+)?)([kmgt]?)bit$ ]] \
        || { echo "$me: RATE must look like 100mbit or 1gbit (or be 'none'), got '$RATE'" >&2; exit 2; }
    # tbf's bucket: 1 ms of traffic at the rate (at least a few full-size packets), so bursts barely beat the cap.
    BURST=${BURST:-$(awk -v n="${BASH_REMATCH[1]}" -v u="${BASH_REMATCH[3]}" 'BEGIN {
        m = u == "k" ? 1e3 : u == "m" ? 1e6 : u == "g" ? 1e9 : u == "t" ? 1e12 : 1
        b = n * m / 8 / 1000; printf "%d", b < 16000 ? 16000 : b }')}
fi

REPO=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-}
if [[ -z $PYTHON ]]; then
    if [[ -x $REPO/.venv/bin/python ]]; then PYTHON=$REPO/.venv/bin/python; else PYTHON=$(command -v python3); fi
fi
TORCHRUN=${TORCHRUN:-$(dirname "$PYTHON")/torchrun}  # the torchrun of that Python's environment
[[ -x $TORCHRUN ]] || TORCHRUN=$(command -v torchrun) \
    || { echo "$me: no torchrun beside $PYTHON or on PATH" >&2; exit 1; }
# The cores each host may use. Hosts are identical, as in a homogeneous cluster: NCPU / HOSTS cores each (cores
# left over stay idle); with more hosts than cores, one core each, round robin.
read -ra CPUS <<< "$("$PYTHON" -c 'import os; print(*sorted(os.sched_getaffinity(0)))')"
NCPU=${#CPUS[@]}
if ((HOSTS <= NCPU)); then
    PER_CORE=$((NCPU / HOSTS))
    ((NCPU % HOSTS == 0)) || echo "$me: $HOSTS hosts on $NCPU cores: $PER_CORE core(s) each, $((NCPU % HOSTS)) left idle"
else
    PER_CORE=1
    echo "$me: $HOSTS hosts outnumber the $NCPU cores: each host gets one core that another host shares (one" \
         "intra-op thread per process; the host wall-clock then includes that sharing, the per-node clock does not)"
fi
host_cpus() {  # the cores of host $1, as a taskset list
    local i=$1 j list=
    if ((HOSTS > NCPU)); then echo "${CPUS[i % NCPU]}"; return; fi
    for ((j = i * PER_CORE; j < (i + 1) * PER_CORE; j++)); do list+=${list:+,}${CPUS[j]}; done
    echo "$list"
}
TAG=${NETNS_TAG:-$$}
declare -A SLOW=()
if [[ -n ${HOST_SLOWDOWN:-} ]]; then
    IFS=, read -ra pairs <<< "$HOST_SLOWDOWN"
    for pair in "${pairs[@]}"; do
        [[ $pair =~ ^([0-9]+):([0-9]+(\.[0-9]+)?)$ ]] && ((BASH_REMATCH[1] < HOSTS)) \
            && awk -v f="${BASH_REMATCH[2]}" 'BEGIN { exit !(f >= 1) }' \
            || { echo "$me: HOST_SLOWDOWN takes HOST:FACTOR pairs (host < $HOSTS, factor >= 1), got '$pair'" >&2; exit 2; }
        SLOW[${BASH_REMATCH[1]}]=${BASH_REMATCH[2]}
    done
fi
SUBNET=${NETNS_SUBNET:-10.213.7}
PORT=${RDZV_PORT:-29500}
SW=dn-$TAG-sw
CREATED=()
CGROUPS=()
PIDS=()

cleanup() {
    local rc=$? ns pids _
    trap - EXIT INT TERM
    for pid in ${PIDS[@]+"${PIDS[@]}"}; do kill -TERM "$pid" 2>/dev/null || true; done
    # A namespace outlives `ip netns del` while a process is in it: stop ours first (TERM, then KILL).
    for ns in ${CREATED[@]+"${CREATED[@]}"}; do
        for _ in $(seq 50); do
            pids=$(ip netns pids "$ns" 2>/dev/null || true)
            [[ -z $pids ]] && break
            kill -TERM $pids 2>/dev/null || true
            sleep 0.2
        done
        pids=$(ip netns pids "$ns" 2>/dev/null || true)
        [[ -n $pids ]] && kill -KILL $pids 2>/dev/null || true
        ip netns del "$ns" 2>/dev/null || echo "$me: could not delete namespace $ns" >&2
    done
    for cg in ${CGROUPS[@]+"${CGROUPS[@]}"}; do
        for _ in $(seq 50); do rmdir "$cg" 2>/dev/null && break; sleep 0.1; done
        [[ ! -d $cg ]] || echo "$me: could not delete cgroup $cg" >&2
    done
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

mkns() { ip netns add "$1"; CREATED+=("$1"); ip -n "$1" link set lo up; }
cap() {  # cap egress of interface $2 in namespace $1; a deep queue (100 ms), so TCP sees a lossless link
    [[ $RATE == none ]] || tc -n "$1" qdisc add dev "$2" root tbf rate "$RATE" burst "$BURST" latency 100ms
}

LINK="tbf $RATE (burst ${BURST:-} B) each way"
[[ $RATE != none ]] || LINK="no cap"
mkns "$SW"
ip -n "$SW" link add decnode-br0 type bridge
ip -n "$SW" link set decnode-br0 up
for ((i = 0; i < HOSTS; i++)); do
    ns=dn-$TAG-h$i
    mkns "$ns"
    # One veth pair per host: eth0 in the host, port$i on the switch's bridge. Created inside the namespaces,
    # so no interface ever appears in the machine's own namespace.
    ip link add eth0 netns "$ns" type veth peer name "port$i" netns "$SW"
    ip -n "$SW" link set "port$i" master decnode-br0 up
    ip -n "$ns" addr add "$SUBNET.$((i + 1))/24" dev eth0
    ip -n "$ns" link set eth0 up
    cap "$ns" eth0       # the host's upload
    cap "$SW" "port$i"   # its download: a full-duplex NIC has the rate each way
    echo "$me: host decnode-h$i: namespace $ns ($(ip netns exec "$ns" readlink /proc/self/ns/net))," \
         "$SUBNET.$((i + 1)) on eth0, $LINK, cores $(host_cpus "$i")"
done

# What the links cost besides bandwidth: the round trip h0 <-> h1 (TCP ping-pong of one byte, no netem here).
PING_SERVER='
import socket, sys
with socket.create_server((sys.argv[1], int(sys.argv[2]))) as s:
    s.settimeout(20)  # the client may never come
    c = s.accept()[0]
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    while b := c.recv(1):
        c.sendall(b)'
PING_CLIENT='
import socket, statistics, sys, time
for _ in range(100):  # until the server listens
    try:
        c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
        break
    except ConnectionRefusedError:
        time.sleep(0.05)
c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
rtt = []
for _ in range(200):
    t = time.perf_counter()
    c.sendall(b"x")
    c.recv(1)
    rtt.append(time.perf_counter() - t)
print(f"{statistics.median(rtt) * 1e6:.0f}")'
ip netns exec "dn-$TAG-h1" "$PYTHON" -c "$PING_SERVER" "$SUBNET.2" "$((PORT + 1))" &
PING=$!
rtt=$(ip netns exec "dn-$TAG-h0" timeout 20 "$PYTHON" -c "$PING_CLIENT" "$SUBNET.2" "$((PORT + 1))") || rtt="?"
wait "$PING" || true
echo "$me: round trip decnode-h0 <-> decnode-h1: $rtt µs (median of 200 one-byte TCP ping-pongs)"

# GLOO_PING=1: the one-way time of a small gloo message between h0 and h1, each pinned to its host's cores as the
# workers will be: what a message costs end to end (gloo, wake-ups, the veth), the α a profile of these hosts needs.
GLOO_PING_PY='
import datetime, statistics, sys, time
import torch, torch.distributed as dist
rank, addr, port = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
torch.set_num_threads(1)
timeout = datetime.timedelta(seconds=30)
dist.init_process_group("gloo", init_method=f"tcp://{addr}:{port}", rank=rank, world_size=2, timeout=timeout)
x, times = torch.zeros(16, dtype=torch.uint8), []
for _ in range(301):
    t = time.perf_counter()
    if rank == 0:
        dist.isend(x, 1, tag=1).wait(timeout)
        dist.irecv(x, 1, tag=2).wait(timeout)
    else:
        dist.irecv(x, 0, tag=1).wait(timeout)
        dist.isend(x, 0, tag=2).wait(timeout)
    times.append(time.perf_counter() - t)
if rank == 0:
    print(f"{statistics.median(times[1:]) / 2 * 1e6:.0f}")
dist.destroy_process_group()'
if [[ ${GLOO_PING:-0} == 1 ]]; then
    ip netns exec "dn-$TAG-h1" env GLOO_SOCKET_IFNAME=eth0 taskset -c "$(host_cpus 1)" timeout 60 "$PYTHON" -c \
        "$GLOO_PING_PY" 1 "$SUBNET.1" "$((PORT + 2))" >/dev/null &
    PING=$!
    one_way=$(ip netns exec "dn-$TAG-h0" env GLOO_SOCKET_IFNAME=eth0 taskset -c "$(host_cpus 0)" timeout 60 \
        "$PYTHON" -c "$GLOO_PING_PY" 0 "$SUBNET.1" "$((PORT + 2))") || one_way="?"
    wait "$PING" || true
    echo "$me: gloo one way decnode-h0 -> decnode-h1: $one_way µs (16 B, median of 300 ping-pongs, pinned as the workers)"
fi

# The stragglers' cgroups: cgroup v2 (cpu.max) or v1's cpu controller (cfs quota), whichever this machine has.
slow_cgroup() {  # host $1 at 1/$2 of its cores; sets PROCS_FILE[$1], the cgroup's procs file
    local i=$1 factor=$2 cg cores period=10000 quota
    cores=$(host_cpus "$i" | tr ',' '\n' | wc -l)
    quota=$(awk -v c="$cores" -v p=$period -v f="$factor" 'BEGIN { printf "%d", c * p / f }')
    if [[ -f /sys/fs/cgroup/cgroup.controllers ]]; then
        cg=/sys/fs/cgroup/dn-$TAG-h$i
        mkdir "$cg" && CGROUPS+=("$cg") && echo "$quota $period" > "$cg/cpu.max"
    else
        cg=/sys/fs/cgroup/cpu/dn-$TAG-h$i
        mkdir "$cg" && CGROUPS+=("$cg") && echo "$period" > "$cg/cpu.cfs_period_us" \
            && echo "$quota" > "$cg/cpu.cfs_quota_us"
    fi || { echo "$me: cannot give host $i a CPU quota (cgroup $cg)" >&2; return 1; }
    echo "$me: host decnode-h$i slowed ${factor}×: CPU quota ${quota} µs per ${period} µs on $cores core(s)"
    PROCS_FILE[$i]=$cg/cgroup.procs
}
declare -A PROCS_FILE=()
for i in "${!SLOW[@]}"; do slow_cgroup "$i" "${SLOW[$i]}"; done

# NET_COUNTERS: the kernel's count of what each host's interface carried, for benchmarks/wire_bytes.py to set beside
# decnode's own (comm/wire.py). Read after the pings above, so only the job's traffic (rendezvous included) counts.
counters() {  # phase: one line per host, "PHASE HOST tx_bytes tx_packets rx_bytes rx_packets"
    [[ -n ${NET_COUNTERS:-} ]] || return 0
    local i f line
    for ((i = 0; i < HOSTS; i++)); do
        line="$1 $i"
        for f in tx_bytes tx_packets rx_bytes rx_packets; do
            line+=" $(ip netns exec "dn-$TAG-h$i" cat "/sys/class/net/eth0/statistics/$f")"
        done
        echo "$line" >> "$NET_COUNTERS"
    done
}
counters before

HEAD=$SUBNET.1
for ((i = 0; i < HOSTS; i++)); do
    # unshare --uts: the host's own hostname, so processes.json and torchrun's logs tell the hosts apart. A
    # straggler's subshell joins its cgroup before exec (inside the namespace, /sys is the namespace's own).
    (
        [[ -z ${PROCS_FILE[$i]:-} ]] || echo "$BASHPID" > "${PROCS_FILE[$i]}"
        exec ip netns exec "dn-$TAG-h$i" env PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" GLOO_SOCKET_IFNAME=eth0 \
            NODE_ADDR="$SUBNET.$((i + 1))" IS_HEAD=$((i == 0)) TORCHRUN="$TORCHRUN" RDZV_ID="decnode-$TAG" \
            taskset -c "$(host_cpus "$i")" unshare --uts sh -c 'hostname "$0" && exec "$@"' "decnode-h$i" \
            "$REPO/launch/multinode.sh" "$HOSTS" "$PER_HOST" "$HEAD:$PORT" "$@"
    ) &
    PIDS+=($!)
done

# Wait for every host; the first failure stops the others (they would wait for it until torchrun's timeouts).
status=0
while true; do
    rc=0 finished=
    wait -n -p finished || rc=$?
    [[ -n ${finished:-} ]] || break  # no host left
    if ((rc != 0 && status == 0)); then
        status=$rc
        echo "$me: the torchrun of a host exited with $rc; stopping the others" >&2
        for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    fi
done
counters after
exit "$status"
