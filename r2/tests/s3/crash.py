"""kill -9 test helper. `write ACKS`: puts objects from 4 threads until the server dies,
logging `begin <key> <md5>` before each put and `ack <key> <md5>` after it succeeds (each line
fsync'd). `verify ACKS`: every object readable in full, its body hashing to its ETag, and each
key holding either its last acknowledged body or one whose put was in flight at the crash.
Environment as suite.py."""

import hashlib
import os
import random
import sys
import threading

import boto3
from botocore.config import Config

BUCKET = "crash"
s3 = boto3.client("s3", endpoint_url=os.environ["S3_ENDPOINT"], region_name="auto",
                  aws_access_key_id=os.environ["S3_ACCESS_KEY"],
                  aws_secret_access_key=os.environ["S3_SECRET_KEY"],
                  config=Config(retries={"max_attempts": 1}, connect_timeout=5, read_timeout=30))


def body(key, attempt):
    rng = random.Random(f"{key}#{attempt}")
    return rng.randbytes(rng.randint(1024, 2 * 1024 * 1024))


def write(acks):
    try:
        s3.create_bucket(Bucket=BUCKET)
    except Exception as e:
        if "BucketAlreadyOwnedByYou" not in str(e):
            raise
    lock = threading.Lock()
    log = open(acks, "a")

    def note(line):
        with lock:
            log.write(line + "\n")
            log.flush()
            os.fsync(log.fileno())

    def worker(t):
        attempt = random.randrange(1 << 30)
        while True:
            attempt += 1
            key = f"t{t}/{attempt % 40:02d}"
            data = body(key, attempt)
            md5 = hashlib.md5(data).hexdigest()
            note(f"begin {key} {md5}")
            try:
                s3.put_object(Bucket=BUCKET, Key=key, Body=data)
            except Exception:
                return
            note(f"ack {key} {md5}")

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()


def verify(acks):
    acked, pending = {}, {}
    for line in open(acks):
        parts = line.split()
        if len(parts) != 3:
            continue  # a torn last line
        kind, key, md5 = parts
        if kind == "ack":
            acked[key] = md5
            pending[key] = set()
        else:
            pending.setdefault(key, set()).add(md5)
    keys = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        keys += [(o["Key"], o["ETag"].strip('"'), o["Size"]) for o in page.get("Contents", [])]
    listed = {k for k, _, _ in keys}
    for key in acked:
        assert key in listed, f"acknowledged {key} is gone"
    for key, etag, size in keys:
        data = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
        md5 = hashlib.md5(data).hexdigest()
        assert len(data) == size and md5 == etag, f"{key}: body does not match its metadata"
        allowed = pending.get(key, set()) | ({acked[key]} if key in acked else set())
        assert md5 in allowed, f"{key}: holds neither its last acknowledged body nor an in-flight one"
    print(f"objects {len(keys)} acknowledged-keys {len(acked)}")


if __name__ == "__main__":
    {"write": write, "verify": verify}[sys.argv[1]](sys.argv[2])
