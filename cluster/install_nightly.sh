#!/usr/bin/env bash
# Installs the nightly study on the Ray head as a systemd timer (run by `ray up` from
# head_setup_commands). The night runs `hdetach-study nightly` against this cluster (--address auto),
# with Tune storage on the shared STORAGE_PATH, logging to the head's MLflow, whose address is
# read from ~/mlflow/tracking_uri when the night starts.
#
#   bash cluster/install_nightly.sh STORAGE_PATH [off]
#
# With HDETACH_UNIT_DIR set, the units are only written there (nothing is installed): that is
# how tests/hdetach/test_nightly_schedule.py checks them.
#
# The batches are in ~/hdetach-nightly.yaml, made once from hdetach/nightly.yaml: edit it to set
# the tasks, configurations and seeds per night. Every night starts GPU workers: pass `off`
# (or later `sudo systemctl disable --now hdetach-nightly.timer`) to install without enabling.
set -euo pipefail

storage=${1:?usage: install_nightly.sh STORAGE_PATH [off]}
enable=${2:-on}
repo="$HOME/hdetach-study"
venv="$HOME/hdetach-venv"
config="$HOME/hdetach-nightly.yaml"

case "$storage" in
  s3://* | gs://* | /*) ;;
  *) echo "install_nightly: STORAGE_PATH must be shared storage (s3://, gs:// or an absolute" \
      "path mounted on every node), got '$storage'" >&2; exit 2 ;;
esac

if [ ! -f "$config" ]; then  # the repository's example, pointed at this cluster
  sed -e 's|^address: null|address: auto|' \
    -e "s|^storage_path: .*|storage_path: $storage|" \
    -e "s|^data_dir: .*|data_dir: $HOME/hdetach-data|" \
    -e "s|^reports_dir: .*|reports_dir: $HOME/hdetach-reports|" \
    -e 's|^gpus_per_trial: .*|gpus_per_trial: 0.25|' \
    -e 's|^seeds_per_trial: .*|seeds_per_trial: 5|' \
    -e 's|^max_concurrent: .*|max_concurrent: null|' \
    -e '/^tracking_uri:/d' "$repo/hdetach/nightly.yaml" > "$config"
fi

unit_dir=${HDETACH_UNIT_DIR:-}
if [ -z "$unit_dir" ]; then
  unit_dir=$(mktemp -d)
  trap 'rm -rf "$unit_dir"' EXIT
fi
# The service of deploy/, with this head's paths, user and credentials (MLflow's address and
# password, Ray's token) read when the night starts, never written into the unit.
sed -e "s|^WorkingDirectory=.*|WorkingDirectory=$repo|" \
  -e "s|^ExecStart=.*|ExecStart=/bin/bash -c 'export MLFLOW_TRACKING_URI=\"\$\$(cat $HOME/mlflow/tracking_uri)\" MLFLOW_TRACKING_USERNAME=admin MLFLOW_TRACKING_PASSWORD=\"\$\$(cat $HOME/.hdetach-study/mlflow_admin_password)\" RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=$HOME/.hdetach-study/ray_auth_token; exec $venv/bin/hdetach-study nightly --config $config'|" \
  -e "s|^\[Service\]|[Service]\nUser=$(id -un)|" \
  "$repo/deploy/hdetach-nightly.service" > "$unit_dir/hdetach-nightly.service"
cp "$repo/deploy/hdetach-nightly.timer" "$unit_dir/"
if [ -n "${HDETACH_UNIT_DIR:-}" ]; then
  exit 0
fi
sudo install -m 644 "$unit_dir"/hdetach-nightly.service "$unit_dir"/hdetach-nightly.timer \
  /etc/systemd/system/
sudo systemctl daemon-reload
if [ "$enable" = on ]; then
  sudo systemctl enable --now hdetach-nightly.timer
else
  echo "install_nightly: installed, not enabled (sudo systemctl enable --now hdetach-nightly.timer)"
fi
