"""A real S3-compatible server for the tests: moto's server mode on 127.0.0.1, started once per session.

Not a mock of the client: s3fs (through aiobotocore) talks HTTP to it exactly as it talks to AWS,
found through ``AWS_ENDPOINT_URL`` with fake credentials (``env()``; the ``s3`` fixture puts them
in the environment of the test and of the processes it starts). moto is a dev dependency: its
import failing fails the tests that use it, it never skips them.

``access_denied()``: from then on the server checks every request against IAM (moto's
``/moto-api/reset-auth``) until the context ends, for a user who may read only some objects.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import urllib.request
from collections.abc import Iterator
from typing import Any

import boto3
from moto.server import ThreadedMotoServer

ACCESS_KEY_ID = "AKIAEXTRACTKITTEST01"
SECRET_ACCESS_KEY = "fake-s3-secret-0f9e8d7c6b5a4-never-stored"  # must never reach the ledger or output
REGION = "us-east-1"


class S3Server:
    def __init__(self) -> None:
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.server.start()
        host, port = self.server.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"
        self._n = itertools.count()
        self.client = boto3.client(
            "s3", endpoint_url=self.endpoint, region_name=REGION,
            aws_access_key_id=ACCESS_KEY_ID, aws_secret_access_key=SECRET_ACCESS_KEY,
        )  # fmt: skip

    def env(self, key_id: str = ACCESS_KEY_ID, secret: str = SECRET_ACCESS_KEY) -> dict[str, str]:
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": key_id, "AWS_SECRET_ACCESS_KEY": secret,
                "AWS_DEFAULT_REGION": REGION, "AWS_EC2_METADATA_DISABLED": "true"}  # fmt: skip

    def new_bucket(self) -> str:
        name = f"extractkit-test-{next(self._n)}"
        self.client.create_bucket(Bucket=name)
        return name

    def put(self, bucket: str, key: str, data: bytes | str) -> None:
        body = data.encode() if isinstance(data, str) else data
        self.client.put_object(Bucket=bucket, Key=key, Body=body)

    def _reset_auth(self, count: str) -> None:
        req = urllib.request.Request(f"{self.endpoint}/moto-api/reset-auth", data=count.encode(), method="POST",
                                     headers={"Content-Type": "application/octet-stream"})  # not a form
        with urllib.request.urlopen(req, timeout=30) as r:
            r.read()

    @contextlib.contextmanager
    def access_denied(self, bucket: str, readable: list[str], *, may_list: bool = True) -> Iterator[dict[str, str]]:
        """Credentials (an ``env()``) of a user who may list ``bucket`` (unless ``may_list`` is
        False) and read only the keys in ``readable``; IAM is enforced by the server while the
        context lasts."""
        iam = boto3.client("iam", endpoint_url=self.endpoint, region_name=REGION,
                           aws_access_key_id=ACCESS_KEY_ID, aws_secret_access_key=SECRET_ACCESS_KEY)  # fmt: skip
        user = f"reader-{next(self._n)}"
        iam.create_user(UserName=user)
        policy: dict[str, Any] = {"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow" if may_list else "Deny", "Action": ["s3:ListBucket"],
             "Resource": f"arn:aws:s3:::{bucket}"},
            {"Effect": "Allow", "Action": ["s3:GetObject"],
             "Resource": [f"arn:aws:s3:::{bucket}/{k}" for k in readable]},
        ]}  # fmt: skip
        iam.put_user_policy(UserName=user, PolicyName="read-some", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName=user)["AccessKey"]
        self._reset_auth("0")
        try:
            yield self.env(key["AccessKeyId"], key["SecretAccessKey"])
        finally:
            self._reset_auth("inf")

    def stop(self) -> None:
        self.server.stop()
