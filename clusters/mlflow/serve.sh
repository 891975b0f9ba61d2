#!/usr/bin/env bash
# MLflow tracking server for a cluster from clusters/aws.yaml or clusters/gcp.yaml.
# Run it on a small VM in the cluster's VPC (it outlives `ray down`):
#
#   pip install mlflow==3.17.2 psycopg2-binary boto3     # google-cloud-storage for gs://
#   MLFLOW_ARTIFACTS_DESTINATION=s3://raykd-mlflow/artifacts clusters/mlflow/serve.sh
#
# Runs and metrics go to Postgres: MLFLOW_BACKEND_STORE_URI (e.g. RDS / Cloud SQL), or,
# when unset, a Postgres container started here (needs docker; data in a named volume).
# Artifacts go to MLFLOW_ARTIFACTS_DESTINATION through the server, so Ray nodes need no
# bucket credentials. Every node uses MLFLOW_TRACKING_URI=http://<this VM's private IP>:5000
# (printed below; put it in clusters/aws.yaml, clusters/gcp.yaml, clusters/runtime_env.yaml).
# Private IPs are allowed Host headers by default; for a DNS name also export
# MLFLOW_SERVER_ALLOWED_HOSTS="mlflow.example.internal:*,localhost:*".
set -euo pipefail

: "${MLFLOW_ARTIFACTS_DESTINATION:?set it to the artifact bucket, e.g. s3://raykd-mlflow/artifacts}"
port="${MLFLOW_PORT:-5000}"

if [[ -z "${MLFLOW_BACKEND_STORE_URI:-}" ]]; then
  pw_file="${HOME}/.raykd-mlflow-postgres-password"
  [[ -s "$pw_file" ]] || (umask 077 && openssl rand -hex 24 > "$pw_file")
  pw="$(cat "$pw_file")"
  if ! docker inspect raykd-mlflow-postgres >/dev/null 2>&1; then
    docker run -d --name raykd-mlflow-postgres --restart unless-stopped \
      -e POSTGRES_USER=mlflow -e POSTGRES_DB=mlflow -e POSTGRES_PASSWORD="$pw" \
      -e PGDATA=/var/lib/postgresql/data/pgdata \
      -v raykd-mlflow-postgres:/var/lib/postgresql/data \
      -p 127.0.0.1:5432:5432 postgres:17 >/dev/null
  fi
  docker start raykd-mlflow-postgres >/dev/null
  until docker exec raykd-mlflow-postgres pg_isready -q -U mlflow -d mlflow; do sleep 1; done
  MLFLOW_BACKEND_STORE_URI="postgresql://mlflow:${pw}@127.0.0.1:5432/mlflow"
fi

echo "MLFLOW_TRACKING_URI=http://$(hostname -I | awk '{print $1}'):${port}" >&2
exec mlflow server \
  --backend-store-uri "$MLFLOW_BACKEND_STORE_URI" \
  --artifacts-destination "$MLFLOW_ARTIFACTS_DESTINATION" \
  --host 0.0.0.0 --port "$port"
