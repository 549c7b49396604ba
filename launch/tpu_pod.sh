#!/usr/bin/env bash
# One jaxbud run on a Cloud TPU VM slice (a TPU pod: several hosts, one process per host).
#
#   launch/tpu_pod.sh create           # create the slice
#   launch/tpu_pod.sh install          # on every worker: Python, jaxbud, jax[tpu], the bucket mount
#   launch/tpu_pod.sh run [FLAGS...]   # start the same launch.train command on every worker
#   launch/tpu_pod.sh logs             # the last lines of worker 0's log (the only one reporting)
#   launch/tpu_pod.sh stop             # SIGTERM on every worker: a checkpoint, then exit 143
#   launch/tpu_pod.sh delete           # delete the slice
#   launch/tpu_pod.sh help
#
# Settings are environment variables (defaults below), for example
#
#   export TPU_NAME=jaxbud-v4-32 ZONE=us-central2-b ACCELERATOR=v4-32 BUCKET=gs://my-bucket
#   launch/tpu_pod.sh create && launch/tpu_pod.sh install
#   launch/tpu_pod.sh run --config.train.batch_size=1024 --config.train.lr=0.4
#
# Every worker runs `python -m launch.train ... --multihost`: jax.distributed.initialize() finds
# the coordinator and the process ids in the TPU VM metadata, each host feeds its own rows of
# every global batch, and all hosts write the Orbax checkpoints together, so the workdir must be
# one folder that every host sees. jaxbud writes its run folder with ordinary file I/O, so the
# bucket is mounted with Cloud Storage FUSE at the same path ($MOUNT) on every worker. Running
# `run` again after a preemption (or `stop`) resumes from the newest checkpoint.
#
# DRY_RUN=1 prints the gcloud commands instead of running them (no gcloud needed).
set -euo pipefail

PROJECT="${PROJECT:-}"                       # empty: gcloud's configured project
TPU_NAME="${TPU_NAME:-jaxbud-pod}"
ZONE="${ZONE:-us-central2-b}"
ACCELERATOR="${ACCELERATOR:-v4-32}"          # v4-32: 16 chips on 4 hosts
RUNTIME="${RUNTIME:-tpu-ubuntu2204-base}"    # v4; v5e: v2-alpha-tpuv5-lite, v5p: v2-alpha-tpuv5
SPOT="${SPOT:-}"                             # 1: a spot slice (cheaper, preemptible)
REPO_URL="${REPO_URL:-https://github.com/YOUR_ORG/jaxbud.git}"
BRANCH="${BRANCH:-main}"
PYTHON_VERSION="${PYTHON_VERSION:-3.11}"     # jaxbud needs >= 3.11; Ubuntu 22.04 has 3.10
JAX_VERSION="${JAX_VERSION:-0.10.2}"         # jax[tpu] pinned to the jax that jaxbud is tested on
BUCKET="${BUCKET:-}"                         # gs://NAME: run folders (and data) live there
MOUNT="${MOUNT:-/mnt/jaxbud}"                # where every worker mounts $BUCKET
CONFIG="${CONFIG:-configs/resnet50_imagenet.py}"
RUN_NAME="${RUN_NAME:-resnet50_imagenet}"
WORKDIR="${WORKDIR:-$MOUNT/runs/$RUN_NAME}"
DATA_DIR="${DATA_DIR:-$MOUNT/tensorflow_datasets}"  # holds the tfds-prepared imagenet2012
REMOTE_DIR='~/jaxbud'
VENV='~/jaxbud-venv'
LOG="~/jaxbud-$RUN_NAME.log"
PID="~/jaxbud-$RUN_NAME.pid"

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
  cat <<EOF
Current settings: TPU_NAME=$TPU_NAME ZONE=$ZONE ACCELERATOR=$ACCELERATOR RUNTIME=$RUNTIME
  REPO_URL=$REPO_URL BRANCH=$BRANCH JAX_VERSION=$JAX_VERSION BUCKET=${BUCKET:-<unset>}
  CONFIG=$CONFIG WORKDIR=$WORKDIR DATA_DIR=$DATA_DIR
EOF
}

die() { echo "error: $*" >&2; exit 2; }

gcloud_() {  # gcloud, or (DRY_RUN) its arguments as plain text, the remote command verbatim
  if [[ -n "${DRY_RUN:-}" ]]; then
    echo "gcloud $*"
  else
    gcloud "$@"
  fi
}

project_flag() { [[ -n "$PROJECT" ]] && echo "--project=$PROJECT" || true; }

on_workers() {  # on_workers WORKERS COMMAND: run COMMAND over ssh on those workers
  local workers="$1" command="$2"
  # shellcheck disable=SC2046  # project_flag is one word or nothing
  gcloud_ compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" $(project_flag) \
    --worker="$workers" --command="$command"
}

need_bucket() {
  [[ "$BUCKET" == gs://?* ]] || die "set BUCKET=gs://NAME (the run folders and data live there)"
}

create() {
  # shellcheck disable=SC2046
  gcloud_ compute tpus tpu-vm create "$TPU_NAME" --zone="$ZONE" $(project_flag) \
    --accelerator-type="$ACCELERATOR" --version="$RUNTIME" ${SPOT:+--spot}
}

install() {
  need_bucket
  local bucket_name="${BUCKET#gs://}"
  bucket_name="${bucket_name%%/*}"
  on_workers all "set -euo pipefail
# Cloud Storage FUSE, so that every worker sees the bucket at $MOUNT
if ! command -v gcsfuse >/dev/null; then
  curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg \
    | sudo tee /usr/share/keyrings/cloud.google.asc >/dev/null
  echo \"deb [signed-by=/usr/share/keyrings/cloud.google.asc]\" \
    \"https://packages.cloud.google.com/apt gcsfuse-\$(lsb_release -cs) main\" \
    | sudo tee /etc/apt/sources.list.d/gcsfuse.list >/dev/null
  sudo apt-get update -q && sudo apt-get install -y -q gcsfuse
fi
sudo mkdir -p $MOUNT && sudo chown \$(id -u):\$(id -g) $MOUNT
# Orbax renames a finished checkpoint folder into place: allow directory renames.
mountpoint -q $MOUNT || gcsfuse --implicit-dirs --rename-dir-limit=200000 $bucket_name $MOUNT
# Python $PYTHON_VERSION through uv, jaxbud from git, jax[tpu] matching jaxbud's jax
command -v uv >/dev/null || curl -LsSf https://astral.sh/uv/install.sh | sh
export PATH=\$HOME/.local/bin:\$PATH
if [ -d $REMOTE_DIR/.git ]; then
  git -C $REMOTE_DIR fetch -q origin $BRANCH && git -C $REMOTE_DIR checkout -q $BRANCH \
    && git -C $REMOTE_DIR pull -q --ff-only
else
  git clone -q --branch $BRANCH $REPO_URL $REMOTE_DIR
fi
[ -x $VENV/bin/python ] || uv venv -q --python $PYTHON_VERSION $VENV
cd $REMOTE_DIR && uv pip install -q --python $VENV/bin/python -e '.[data]' 'jax[tpu]==$JAX_VERSION'
$VENV/bin/python -c 'import jax, jaxbud; print(jax.__version__)'"
}

run() {
  need_bucket
  local flags="" f
  for f in "$@"; do flags+=" $(printf '%q' "$f")"; done
  # nohup: the job outlives the ssh session; each worker keeps its own log and pid file.
  on_workers all "set -euo pipefail
mountpoint -q $MOUNT || { echo 'bucket not mounted at $MOUNT: run install first' >&2; exit 1; }
cd $REMOTE_DIR
nohup $VENV/bin/python -m launch.train --config=$CONFIG --workdir=$WORKDIR \
  --config.data.data_dir=$DATA_DIR --multihost$flags > $LOG 2>&1 < /dev/null &
echo \$! > $PID
echo \"worker \$(hostname): started pid \$(cat $PID), log $LOG\""
}

logs() { on_workers 0 "tail -n ${LOG_LINES:-40} $LOG"; }

stop() { on_workers all "[ -f $PID ] && kill -TERM \$(cat $PID) || true"; }

delete() {
  # shellcheck disable=SC2046
  gcloud_ compute tpus tpu-vm delete "$TPU_NAME" --zone="$ZONE" $(project_flag) --quiet
}

main() {
  local cmd="${1:-}"
  [[ $# -gt 0 ]] && shift
  case "$cmd" in
    create|delete|logs|stop)
      [[ $# -eq 0 ]] || die "$cmd takes no arguments"
      "$cmd" ;;
    install)
      [[ $# -eq 0 ]] || die "install takes no arguments"
      install ;;
    run) run "$@" ;;
    help|-h|--help) usage ;;
    "") usage >&2; exit 2 ;;
    *) die "unknown command '$cmd'; expected create, install, run, logs, stop, delete or help" ;;
  esac
}

main "$@"
