#!/usr/bin/env bash
# The study's MLflow tracking server on the Ray head node: basic auth (`--app-name basic-auth`),
# a sqlite store and proxied artifacts on the head's disk, bound to one private address (never
# a wildcard), reachable from the cluster's security group and, from outside, only through an
# SSH tunnel.
#
# Usage: bash cluster/mlflow_server.sh start|stop|run
#   start  stop the server a previous `start` left, launch `run` in the background, wait until
#          it answers, check that it refuses a request without credentials and accepts the
#          admin's, then write its URI to $HDETACH_MLFLOW_HOME/tracking_uri
#   stop   stop the server `start` launched
#   run    run the server in the foreground
#
# Settings, from the environment:
#   HDETACH_MLFLOW_HOST     address to bind. Default: the first address `hostname -I` lists,
#                           the head's private VPC address on AWS. Wildcards are refused.
#   HDETACH_MLFLOW_PORT     default 5000
#   HDETACH_MLFLOW_HOME     default ~/mlflow: mlflow.db, basic_auth.db, artifacts/, server.log
#   HDETACH_MLFLOW_PASSWORD_FILE  default ~/.hdetach-study/mlflow_admin_password. Read once,
#                           when the auth database is created; later changes need MLflow's
#                           update-password API.
#   HDETACH_MLFLOW_BACKEND_STORE_URI  default sqlite:///$HDETACH_MLFLOW_HOME/mlflow.db.
#                           PostgreSQL: postgresql://USER@DBHOST:5432/mlflow with the password
#                           in ~/.pgpass and psycopg2-binary installed in the venv.
#   HDETACH_MLFLOW_ARTIFACTS_DESTINATION  default $HDETACH_MLFLOW_HOME/artifacts.
#                           S3: s3://YOUR-BUCKET/hdetach-study/mlflow-artifacts (boto3, and an
#                           instance role that may write there).
#   HDETACH_MLFLOW_WORKERS  uvicorn worker processes, default 2
#   HDETACH_PYTHON          interpreter with mlflow[auth] installed, default python3
set -euo pipefail

admin_user="admin"
home_dir="${HDETACH_MLFLOW_HOME:-$HOME/mlflow}"
port="${HDETACH_MLFLOW_PORT:-5000}"
password_file="${HDETACH_MLFLOW_PASSWORD_FILE:-$HOME/.hdetach-study/mlflow_admin_password}"
backend_store_uri="${HDETACH_MLFLOW_BACKEND_STORE_URI:-sqlite:///$home_dir/mlflow.db}"
artifacts_destination="${HDETACH_MLFLOW_ARTIFACTS_DESTINATION:-$home_dir/artifacts}"
workers="${HDETACH_MLFLOW_WORKERS:-2}"
python="${HDETACH_PYTHON:-python3}"
pid_file="$home_dir/server.pid"

die() {
  echo "mlflow_server.sh: $*" >&2
  exit 1
}

bind_host() {
  local host="${HDETACH_MLFLOW_HOST:-}"
  if [ -z "$host" ]; then
    host="$(hostname -I 2>/dev/null | awk '{print $1}')" \
      || die "cannot list this machine's addresses; set HDETACH_MLFLOW_HOST"
  fi
  case "$host" in
    "" | 0.0.0.0 | :: | "[::]" | "*")
      die "refusing to bind to '$host': set HDETACH_MLFLOW_HOST to the head's private address" ;;
  esac
  echo "$host"
}

run_server() {
  local host
  host="$(bind_host)"
  [ -s "$password_file" ] || die "admin password file $password_file is missing or empty"
  umask 077
  mkdir -p "$home_dir"

  # Flask's CSRF key must stay the same across restarts and workers: made once, kept.
  local secret_key_file="$home_dir/flask_secret_key"
  if [ ! -s "$secret_key_file" ]; then
    "$python" -c "import secrets; print(secrets.token_hex(32), end='')" >"$secret_key_file"
  fi

  # The password travels in the environment, never in a file MLflow reads or on a command line
  # other users could see in `ps`.
  cat >"$home_dir/basic_auth.ini" <<EOF
[mlflow]
default_permission = READ
database_uri = sqlite:///$home_dir/basic_auth.db
admin_username = $admin_user
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
EOF
  export MLFLOW_AUTH_CONFIG_PATH="$home_dir/basic_auth.ini"
  MLFLOW_AUTH_ADMIN_PASSWORD="$(cat "$password_file")"
  MLFLOW_FLASK_SERVER_SECRET_KEY="$(cat "$secret_key_file")"
  export MLFLOW_AUTH_ADMIN_PASSWORD MLFLOW_FLASK_SERVER_SECRET_KEY
  # No GenAI job runner (extra worker processes the study never uses), no telemetry calls.
  export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false MLFLOW_DISABLE_TELEMETRY=true

  exec "$python" -m mlflow server \
    --app-name basic-auth \
    --host "$host" --port "$port" --workers "$workers" \
    --backend-store-uri "$backend_store_uri" \
    --serve-artifacts --artifacts-destination "$artifacts_destination" \
    --allowed-hosts "$host,$host:$port,localhost,localhost:*,127.0.0.1,127.0.0.1:*"
}

stop_server() {
  [ -f "$pid_file" ] || return 0
  local pid
  pid="$(cat "$pid_file")"
  if kill -0 "$pid" 2>/dev/null; then
    # `start` made the server a session leader: its process group is the server and its workers.
    kill -TERM -- "-$pid" 2>/dev/null || true
    for _ in $(seq 40); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.5
    done
    kill -KILL -- "-$pid" 2>/dev/null || true
  fi
  rm -f "$pid_file"
}

# Waits for /health, then checks that auth is really on and the admin password is the one the
# auth database holds (it is read only when that database is created).
check_server() {  # $1: pid, $2: base URL
  MLFLOW_CHECK_PASSWORD="$(cat "$password_file")" "$python" - "$1" "$2" "$admin_user" <<'EOF'
import base64, os, sys, time, urllib.error, urllib.request

pid, url, user = int(sys.argv[1]), sys.argv[2], sys.argv[3]
password = os.environ["MLFLOW_CHECK_PASSWORD"]


def status(path, headers=None):
    request = urllib.request.Request(url + path, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


deadline = time.monotonic() + 180
while True:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        sys.exit(f"the server exited before answering on {url}")
    try:
        if status("/health") == 200:
            break
    except OSError:
        pass
    if time.monotonic() > deadline:
        sys.exit(f"no answer from {url}/health after 180 s")
    time.sleep(0.5)

probe = "/api/2.0/mlflow/experiments/search?max_results=1"
anonymous = status(probe)
if anonymous != 401:
    sys.exit(f"a request without credentials got {anonymous}, expected 401: auth is off")
basic = base64.b64encode(f"{user}:{password}".encode()).decode()
admin = status(probe, {"Authorization": f"Basic {basic}"})
if admin != 200:
    sys.exit(
        f"the admin's request got {admin}, expected 200: the password file differs from the"
        " password the auth database was created with"
    )
EOF
}

start_server() {
  local host
  host="$(bind_host)"
  [ -s "$password_file" ] || die "admin password file $password_file is missing or empty"
  stop_server
  umask 077
  mkdir -p "$home_dir"
  setsid nohup bash "$0" run >"$home_dir/server.log" 2>&1 </dev/null &
  local pid=$!
  echo "$pid" >"$pid_file"
  local url="http://$host:$port"
  if ! check_server "$pid" "$url"; then
    tail -n 30 "$home_dir/server.log" >&2 || true
    stop_server
    die "the server did not come up as expected; log: $home_dir/server.log"
  fi
  echo "$url" >"$home_dir/tracking_uri"
  echo "MLflow tracking server at $url (basic auth; pid $pid; log $home_dir/server.log)"
}

case "${1:-}" in
  start) start_server ;;
  stop) stop_server ;;
  run) run_server ;;
  *) die "usage: mlflow_server.sh start|stop|run" ;;
esac
