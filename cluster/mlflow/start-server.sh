#!/usr/bin/env bash
# Start an MLflow tracking server with basic authentication and artifacts on S3.
#
# Settings (environment):
#   MLFLOW_ARTIFACTS_DESTINATION  where the server stores artifacts, e.g. s3://bucket/mlflow
#                                 (required; clients upload through the server, so they need
#                                 no S3 credentials)
#   MLFLOW_BACKEND_STORE_URI      runs database (default: sqlite:///mlflow.db in the state
#                                 folder; postgresql://... for a shared server)
#   MLFLOW_STATE_DIR              the server's working folder: sqlite files (default:
#                                 ./mlflow-server)
#   MLFLOW_AUTH_CONFIG_PATH       auth settings (default: basic_auth.ini beside this script)
#   MLFLOW_HOST, MLFLOW_PORT      where to listen (default 127.0.0.1:5000: put a TLS proxy in
#                                 front, basic auth sends passwords with every request)
#   MLFLOW_WORKERS                server worker processes (default 2)
#   MLFLOW_ALLOWED_HOSTS          Host headers to accept besides localhost and private IPs,
#                                 e.g. mlflow.example.org
#   MLFLOW_S3_ENDPOINT_URL        an S3-compatible server instead of AWS
# Secrets, from the environment or from the file named by the same variable plus _FILE:
#   MLFLOW_AUTH_ADMIN_PASSWORD      the first admin's password (a new users database only)
#   MLFLOW_FLASK_SERVER_SECRET_KEY  CSRF signing key, the same on every replica
#   AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY  only where no IAM role provides S3 access
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

# NAME from the file named by NAME_FILE, unless NAME is set already.
load_secret() {
  local name="$1" file_var="${1}_FILE"
  if [[ -z "${!name:-}" && -n "${!file_var:-}" ]]; then
    export "${name}=$(<"${!file_var}")"
  fi
  unset "${file_var}"
}
for name in MLFLOW_AUTH_ADMIN_PASSWORD MLFLOW_FLASK_SERVER_SECRET_KEY \
  AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY; do
  load_secret "$name"
done

: "${MLFLOW_ARTIFACTS_DESTINATION:?set MLFLOW_ARTIFACTS_DESTINATION, e.g. s3://bucket/mlflow}"
: "${MLFLOW_FLASK_SERVER_SECRET_KEY:?set MLFLOW_FLASK_SERVER_SECRET_KEY or MLFLOW_FLASK_SERVER_SECRET_KEY_FILE}"

state="${MLFLOW_STATE_DIR:-$PWD/mlflow-server}"
umask 077
mkdir -p "$state"
cd "$state"
export MLFLOW_AUTH_CONFIG_PATH="${MLFLOW_AUTH_CONFIG_PATH:-$here/basic_auth.ini}"

args=(
  --app-name basic-auth
  --backend-store-uri "${MLFLOW_BACKEND_STORE_URI:-sqlite:///mlflow.db}"
  --artifacts-destination "$MLFLOW_ARTIFACTS_DESTINATION"
  --host "${MLFLOW_HOST:-127.0.0.1}"
  --port "${MLFLOW_PORT:-5000}"
  --workers "${MLFLOW_WORKERS:-2}"
)
if [[ -n "${MLFLOW_ALLOWED_HOSTS:-}" ]]; then
  args+=(--allowed-hosts "$MLFLOW_ALLOWED_HOSTS")
fi
exec mlflow server "${args[@]}"
