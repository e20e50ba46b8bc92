#!/usr/bin/env bash
# Creates the two secrets the cluster needs, on the machine you run `ray up` from:
#   ray_auth_token          the shared Ray token (RAY_AUTH_MODE=token) of every node and client
#   mlflow_admin_password   the MLflow tracking server's admin password (basic auth)
# Both land in one directory outside the repository (default ~/.hdetach-study, mode 700,
# files mode 600), which the cluster YAMLs ship to every node with `file_mounts`.
# Existing files are kept, so re-running never rotates a secret behind a running cluster.
#
# Usage: bash cluster/make_secrets.sh [DIR]
set -euo pipefail

dir="${1:-$HOME/.hdetach-study}"
umask 077
mkdir -p "$dir"
chmod 700 "$dir"

# A secrets directory inside a git work tree must at least be ignored by git: refuse otherwise,
# since one `git add -A` would publish the token that lets anyone run code on the cluster.
if git -C "$dir" rev-parse --is-inside-work-tree >/dev/null 2>&1 \
  && ! git -C "$dir" check-ignore -q "$dir/ray_auth_token"; then
  echo "make_secrets.sh: $dir is inside a git work tree and not ignored by git; use a" \
    "directory outside the repository (default: ~/.hdetach-study)" >&2
  exit 2
fi

new_secret() {  # $1: file, $2: python expression giving the secret
  if [ -s "$1" ]; then
    echo "kept     $1"
  else
    python3 -c "import secrets; print($2, end='')" >"$1"
    chmod 600 "$1"
    echo "created  $1"
  fi
}

new_secret "$dir/ray_auth_token" "secrets.token_hex(32)"
new_secret "$dir/mlflow_admin_password" "secrets.token_urlsafe(24)"
