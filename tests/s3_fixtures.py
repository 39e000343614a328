"""An S3-compatible endpoint for the tests: moto in server mode on a free loopback port, with one bucket,
reached through an Airflow AWS connection as production reaches S3."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from types import SimpleNamespace

BUCKET = "nightshift-lake"
KEY, SECRET, REGION = "testing", "testing", "us-east-1"


@contextlib.contextmanager
def moto_endpoint() -> Iterator[SimpleNamespace]:
    """A moto S3 server (binding a free port itself) and a boto3 client on it, with `BUCKET` created."""
    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # not a line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    try:
        url = f"http://127.0.0.1:{server.get_host_and_port()[1]}"
        client = boto3.client("s3", endpoint_url=url, aws_access_key_id=KEY, aws_secret_access_key=SECRET,
                              region_name=REGION)  # fmt: skip
        client.create_bucket(Bucket=BUCKET)
        yield SimpleNamespace(url=url, client=client)
    finally:
        server.stop()


def connection_env(conn_id: str, endpoint_url: str) -> dict[str, str]:
    """`AIRFLOW_CONN_…`: the AWS connection to the endpoint, as an environment variable."""
    extra = {"endpoint_url": endpoint_url, "region_name": REGION}
    value = {"conn_type": "aws", "login": KEY, "password": SECRET, "extra": extra}
    return {f"AIRFLOW_CONN_{conn_id.upper()}": json.dumps(value)}


def keys(client, prefix: str = "") -> set[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return {o["Key"] for page in pages for o in page.get("Contents", [])}
