#!/usr/bin/env bash
# Random secrets for docker/compose.yaml, one file each under docker/secrets/ (owner-only).
# Existing files are kept, so running it again changes nothing. Never commit docker/secrets/.
set -euo pipefail

folder="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/secrets"
umask 077
mkdir -p "$folder"
for name in s3_access_key_id s3_secret_access_key mlflow_admin_password \
  mlflow_flask_secret_key grafana_admin_password; do
  if [[ ! -s "$folder/$name" ]]; then
    python3 -c "import secrets; print(secrets.token_urlsafe(24))" > "$folder/$name"
    echo "created $folder/$name"
  fi
done
echo "MLflow admin: user admin, password in $folder/mlflow_admin_password"
echo "Grafana admin: user admin, password in $folder/grafana_admin_password"
