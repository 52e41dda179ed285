"""A 1 GiB upload with the aws CLI (multipart, its default 8 MiB parts and 10 threads), then
a streamed boto3 download, both checked by hash. Environment as suite.py; argv[1] is a
scratch directory."""

import hashlib
import os
import subprocess
import sys

import boto3

GIB = 1 << 30
PART = 8 * 1024 * 1024
scratch = sys.argv[1]
path = os.path.join(scratch, "big.bin")
md5_all, part_md5s = hashlib.md5(), []
with open(path, "wb") as f:
    block = os.urandom(PART)
    for i in range(GIB // PART):
        # Each part differs (so a part landing in the wrong place is caught), cheaply.
        data = i.to_bytes(8, "big") + block[8:]
        f.write(data)
        md5_all.update(data)
        part_md5s.append(hashlib.md5(data).digest())
want_etag = hashlib.md5(b"".join(part_md5s)).hexdigest() + f"-{len(part_md5s)}"

env = dict(os.environ, AWS_ACCESS_KEY_ID=os.environ["S3_ACCESS_KEY"],
           AWS_SECRET_ACCESS_KEY=os.environ["S3_SECRET_KEY"], AWS_DEFAULT_REGION="us-east-1",
           AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull)
aws = ["aws", "--endpoint-url", os.environ["S3_ENDPOINT"]]
subprocess.run(aws + ["s3", "mb", "s3://big"], env=env, check=True, capture_output=True)
subprocess.run(aws + ["s3", "cp", "--only-show-errors", path, "s3://big/big.bin"], env=env, check=True)
os.remove(path)

s3 = boto3.client("s3", endpoint_url=os.environ["S3_ENDPOINT"], region_name="auto",
                  aws_access_key_id=os.environ["S3_ACCESS_KEY"],
                  aws_secret_access_key=os.environ["S3_SECRET_KEY"])
head = s3.head_object(Bucket="big", Key="big.bin")
assert head["ContentLength"] == GIB, head
assert head["ETag"] == f'"{want_etag}"', (head["ETag"], want_etag)
body = s3.get_object(Bucket="big", Key="big.bin")["Body"]
got = hashlib.md5()
n = 0
for chunk in body.iter_chunks(1 << 20):
    got.update(chunk)
    n += len(chunk)
assert n == GIB and got.hexdigest() == md5_all.hexdigest(), "downloaded body differs"
print("uploaded and downloaded 1 GiB")
