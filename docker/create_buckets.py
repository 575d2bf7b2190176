"""Create S3 buckets that do not exist yet (compose's `s3-init` service runs it once the S3
server is up). Endpoint from AWS_ENDPOINT_URL_S3; credentials from the environment or from
the files named by AWS_ACCESS_KEY_ID_FILE / AWS_SECRET_ACCESS_KEY_FILE.

    python create_buckets.py BUCKET [BUCKET ...]
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path


def secret(name: str) -> str | None:
    """`name` from the environment, else from the file named by `name`_FILE."""
    if os.environ.get(name):
        return os.environ[name]
    path = os.environ.get(f"{name}_FILE")
    return Path(path).read_text().strip() if path else None


def main(buckets: list[str]) -> int:
    """Create each missing bucket, waiting up to a minute for the server."""
    import boto3
    from botocore.exceptions import ClientError, EndpointConnectionError

    client = boto3.client(
        "s3",
        endpoint_url=os.environ.get("AWS_ENDPOINT_URL_S3"),
        aws_access_key_id=secret("AWS_ACCESS_KEY_ID"),
        aws_secret_access_key=secret("AWS_SECRET_ACCESS_KEY"),
        region_name=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
            break
        except (EndpointConnectionError, ClientError) as exc:
            if time.monotonic() > deadline:
                print(f"create_buckets: S3 server not ready: {exc}", file=sys.stderr)
                return 1
            time.sleep(2)
    for bucket in buckets:
        if bucket not in existing:
            client.create_bucket(Bucket=bucket)
            print(f"created s3://{bucket}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
