"""S3 clients against a running cinder-r2 server, as their users run them.

Environment: S3_ENDPOINT (http://127.0.0.1:PORT), S3_ACCESS_KEY, S3_SECRET_KEY.
Usage: suite.py [test-name ...]  (all tests when none is named). Prints one line per test
and a closing "N passed, M failed"; exits 1 if any failed.
"""

import base64
import hashlib
import hmac
import io
import os
import subprocess
import sys
import tempfile
import traceback
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
import zlib

import boto3
import botocore
from boto3.s3.transfer import TransferConfig
from botocore.auth import S3SigV4Auth, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

ENDPOINT = os.environ["S3_ENDPOINT"]
AK = os.environ["S3_ACCESS_KEY"]
SK = os.environ["S3_SECRET_KEY"]
REGION = "auto"
MIB = 1024 * 1024


def client(**cfg):
    return boto3.client(
        "s3",
        endpoint_url=cfg.pop("endpoint", ENDPOINT),
        aws_access_key_id=AK,
        aws_secret_access_key=cfg.pop("secret", SK),
        region_name=REGION,
        config=Config(**cfg),
    )


s3 = client()


def expect_error(code, status, fn, *a, **kw):
    try:
        fn(*a, **kw)
    except ClientError as e:
        got = (e.response["Error"]["Code"], e.response["ResponseMetadata"]["HTTPStatusCode"])
        assert got == (code, status), f"expected {code}/{status}, got {got}: {e}"
        return e
    raise AssertionError(f"expected {code}, call succeeded")


def raw(method, path, headers=None, body=b"", secret=SK, host=None):
    """A SigV4-signed request built by botocore's signer, sent with urllib: status, headers
    and the raw body, so the XML can be checked as sent."""
    url = ENDPOINT + path
    headers = dict(headers or {})
    headers["x-amz-content-sha256"] = hashlib.sha256(body).hexdigest()
    req = AWSRequest(method=method, url=url, data=body, headers=headers)
    S3SigV4Auth(Credentials(AK, secret), "s3", REGION).add_auth(req)
    prepared = urllib.request.Request(url, data=body or None, method=method, headers=dict(req.headers.items()))
    try:
        with urllib.request.urlopen(prepared) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def xml_code(body):
    root = ET.fromstring(body)
    assert root.tag == "Error", body
    return root.findtext("Code"), root


def fresh_bucket(name):
    try:
        s3.create_bucket(Bucket=name)
    except ClientError as e:
        if e.response["Error"]["Code"] != "BucketAlreadyOwnedByYou":
            raise
    return name


# ---------------------------------------------------------------------------------------

def test_buckets():
    s3.create_bucket(Bucket="suite-buckets")
    names = [b["Name"] for b in s3.list_buckets()["Buckets"]]
    assert "suite-buckets" in names, names
    s3.head_bucket(Bucket="suite-buckets")
    expect_error("BucketAlreadyOwnedByYou", 409, s3.create_bucket, Bucket="suite-buckets")
    expect_error("InvalidBucketName", 400, s3.create_bucket, Bucket="Bad_Name")
    expect_error("404", 404, s3.head_bucket, Bucket="no-such-bucket")
    s3.put_object(Bucket="suite-buckets", Key="k", Body=b"x")
    expect_error("BucketNotEmpty", 409, s3.delete_bucket, Bucket="suite-buckets")
    s3.delete_object(Bucket="suite-buckets", Key="k")
    s3.delete_bucket(Bucket="suite-buckets")
    names = [b["Name"] for b in s3.list_buckets()["Buckets"]]
    assert "suite-buckets" not in names, names


def test_objects_metadata_ranges_conditionals():
    b = fresh_bucket("suite-objects")
    put = s3.put_object(Bucket=b, Key="a/b c+d.txt", Body=b"0123456789", ContentType="text/plain",
                        Metadata={"colour": "blue"}, CacheControl="max-age=5")
    etag = put["ETag"]
    assert etag == '"%s"' % hashlib.md5(b"0123456789").hexdigest(), etag
    h = s3.head_object(Bucket=b, Key="a/b c+d.txt")
    assert h["ContentLength"] == 10 and h["ETag"] == etag, h
    assert h["ContentType"] == "text/plain" and h["Metadata"] == {"colour": "blue"}, h
    assert h["CacheControl"] == "max-age=5", h
    g = s3.get_object(Bucket=b, Key="a/b c+d.txt")
    assert g["Body"].read() == b"0123456789"
    r = s3.get_object(Bucket=b, Key="a/b c+d.txt", Range="bytes=2-5")
    assert r["Body"].read() == b"2345" and r["ContentRange"] == "bytes 2-5/10", r
    assert r["ResponseMetadata"]["HTTPStatusCode"] == 206
    r = s3.get_object(Bucket=b, Key="a/b c+d.txt", Range="bytes=-3")
    assert r["Body"].read() == b"789"
    expect_error("InvalidRange", 416, s3.get_object, Bucket=b, Key="a/b c+d.txt", Range="bytes=100-")
    expect_error("304", 304, s3.get_object, Bucket=b, Key="a/b c+d.txt", IfNoneMatch=etag)
    expect_error("PreconditionFailed", 412, s3.get_object, Bucket=b, Key="a/b c+d.txt", IfMatch='"nope"')
    assert s3.get_object(Bucket=b, Key="a/b c+d.txt", IfMatch=etag)["Body"].read() == b"0123456789"
    expect_error("NoSuchKey", 404, s3.get_object, Bucket=b, Key="missing")
    expect_error("NoSuchBucket", 404, s3.get_object, Bucket="no-such-bucket", Key="k")
    # Conditional writes.
    expect_error("PreconditionFailed", 412, s3.put_object, Bucket=b, Key="a/b c+d.txt", Body=b"x", IfNoneMatch="*")
    # A refused conditional put is answered before its body is read; the connection must
    # not then carry the next request (it did, once: the next response was garbage).
    for i in range(25):
        expect_error("PreconditionFailed", 412, s3.put_object, Bucket=b, Key="a/b c+d.txt", Body=b"x" * i,
                     IfNoneMatch="*")
        s3.put_object(Bucket=b, Key=f"after/{i}", Body=b"y")
    s3.put_object(Bucket=b, Key="unicode/é ü", Body=b"u")
    assert s3.get_object(Bucket=b, Key="unicode/é ü")["Body"].read() == b"u"
    g = s3.get_object(Bucket=b, Key="a/b c+d.txt", ResponseContentType="application/x-test")
    assert g["ContentType"] == "application/x-test", g["ContentType"]


def test_list_v2_and_v1():
    b = fresh_bucket("suite-list")
    keys = [f"p/{i:02d}" for i in range(7)] + ["q/a/1", "q/a/2", "q/b/1", "q/top", "sp ace/+plus"]
    for k in keys:
        s3.put_object(Bucket=b, Key=k, Body=k.encode())
    seen = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=b, PaginationConfig={"PageSize": 2}):
        seen += [o["Key"] for o in page.get("Contents", [])]
    assert seen == sorted(keys), seen
    r = s3.list_objects_v2(Bucket=b, Prefix="q/", Delimiter="/")
    assert [p["Prefix"] for p in r["CommonPrefixes"]] == ["q/a/", "q/b/"], r
    assert [o["Key"] for o in r["Contents"]] == ["q/top"], r
    assert r["KeyCount"] == 3
    r = s3.list_objects_v2(Bucket=b, StartAfter="p/05", MaxKeys=2)
    assert [o["Key"] for o in r["Contents"]] == ["p/06", "q/a/1"] and r["IsTruncated"], r
    seen = []
    for page in s3.get_paginator("list_objects").paginate(Bucket=b, PaginationConfig={"PageSize": 3}):
        seen += [o["Key"] for o in page.get("Contents", [])]
    assert seen == sorted(keys), seen
    o = s3.list_objects_v2(Bucket=b, Prefix="sp ace/")["Contents"][0]
    assert o["Key"] == "sp ace/+plus" and o["Size"] == len(b"sp ace/+plus"), o
    expect_error("NoSuchBucket", 404, s3.list_objects_v2, Bucket="no-such-bucket")


def test_delete_objects_and_copy():
    b = fresh_bucket("suite-copy")
    for k in ["d1", "d2", "d3"]:
        s3.put_object(Bucket=b, Key=k, Body=b"data")
    r = s3.delete_objects(Bucket=b, Delete={"Objects": [{"Key": "d1"}, {"Key": "d2"}, {"Key": "nope"}]})
    assert sorted(d["Key"] for d in r["Deleted"]) == ["d1", "d2", "nope"], r
    left = [o["Key"] for o in s3.list_objects_v2(Bucket=b).get("Contents", [])]
    assert left == ["d3"], left
    s3.put_object(Bucket=b, Key="src", Body=b"copy me", Metadata={"m": "1"}, ContentType="text/x")
    c = s3.copy_object(Bucket=b, Key="dst", CopySource={"Bucket": b, "Key": "src"})
    assert c["CopyObjectResult"]["ETag"] == '"%s"' % hashlib.md5(b"copy me").hexdigest()
    h = s3.head_object(Bucket=b, Key="dst")
    assert h["Metadata"] == {"m": "1"} and h["ContentType"] == "text/x", h
    s3.copy_object(Bucket=b, Key="dst2", CopySource=f"{b}/src", MetadataDirective="REPLACE", Metadata={"n": "2"})
    assert s3.head_object(Bucket=b, Key="dst2")["Metadata"] == {"n": "2"}
    expect_error("InvalidRequest", 400, s3.copy_object, Bucket=b, Key="src", CopySource=f"{b}/src")
    expect_error("NoSuchKey", 404, s3.copy_object, Bucket=b, Key="x", CopySource=f"{b}/missing")


def test_multipart_low_level():
    b = fresh_bucket("suite-mpu")
    p1, p2 = os.urandom(5 * MIB), b"last part"
    up = s3.create_multipart_upload(Bucket=b, Key="big", Metadata={"k": "v"})
    uid = up["UploadId"]
    e1 = s3.upload_part(Bucket=b, Key="big", UploadId=uid, PartNumber=1, Body=p1)["ETag"]
    e2 = s3.upload_part(Bucket=b, Key="big", UploadId=uid, PartNumber=2, Body=p2)["ETag"]
    parts = s3.list_parts(Bucket=b, Key="big", UploadId=uid)["Parts"]
    assert [(p["PartNumber"], p["Size"]) for p in parts] == [(1, 5 * MIB), (2, len(p2))], parts
    uploads = s3.list_multipart_uploads(Bucket=b).get("Uploads", [])
    assert [u["UploadId"] for u in uploads] == [uid], uploads
    expect_error("InvalidPartOrder", 400, s3.complete_multipart_upload, Bucket=b, Key="big", UploadId=uid,
                 MultipartUpload={"Parts": [{"PartNumber": 2, "ETag": e2}, {"PartNumber": 1, "ETag": e1}]})
    expect_error("InvalidPart", 400, s3.complete_multipart_upload, Bucket=b, Key="big", UploadId=uid,
                 MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": '"' + "0" * 32 + '"'}]})
    done = s3.complete_multipart_upload(Bucket=b, Key="big", UploadId=uid,
                                        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": e1},
                                                                   {"PartNumber": 2, "ETag": e2}]})
    want = hashlib.md5(hashlib.md5(p1).digest() + hashlib.md5(p2).digest()).hexdigest() + "-2"
    assert done["ETag"] == f'"{want}"', done
    g = s3.get_object(Bucket=b, Key="big")
    assert g["Body"].read() == p1 + p2 and g["Metadata"] == {"k": "v"}
    r = s3.get_object(Bucket=b, Key="big", Range=f"bytes={5 * MIB - 2}-{5 * MIB + 1}")
    assert r["Body"].read() == p1[-2:] + p2[:2]
    up2 = s3.create_multipart_upload(Bucket=b, Key="aborted")["UploadId"]
    s3.upload_part(Bucket=b, Key="aborted", UploadId=up2, PartNumber=1, Body=b"x")
    s3.abort_multipart_upload(Bucket=b, Key="aborted", UploadId=up2)
    expect_error("NoSuchUpload", 404, s3.upload_part, Bucket=b, Key="aborted", UploadId=up2, PartNumber=2, Body=b"y")
    expect_error("NoSuchUpload", 404, s3.list_parts, Bucket=b, Key="aborted", UploadId="0" * 32)


def test_managed_transfers():
    b = fresh_bucket("suite-transfer")
    data = os.urandom(13 * MIB)
    cfg = TransferConfig(multipart_threshold=5 * MIB, multipart_chunksize=5 * MIB, max_concurrency=4)
    s3.upload_fileobj(io.BytesIO(data), b, "managed", Config=cfg)
    h = s3.head_object(Bucket=b, Key="managed")
    assert h["ContentLength"] == len(data) and h["ETag"].endswith('-3"'), h
    out = io.BytesIO()
    s3.download_fileobj(b, "managed", out, Config=cfg)
    assert out.getvalue() == data
    # A server-side multipart copy (UploadPartCopy) of the same object.
    s3.copy({"Bucket": b, "Key": "managed"}, b, "managed-copy", Config=cfg)
    assert s3.get_object(Bucket=b, Key="managed-copy")["Body"].read() == data


def test_presigned_urls():
    b = fresh_bucket("suite-presign")
    put_url = s3.generate_presigned_url("put_object", Params={"Bucket": b, "Key": "p"}, ExpiresIn=300)
    req = urllib.request.Request(put_url, data=b"presigned body", method="PUT")
    with urllib.request.urlopen(req) as r:
        assert r.status == 200
    get_url = s3.generate_presigned_url("get_object", Params={"Bucket": b, "Key": "p"}, ExpiresIn=300)
    with urllib.request.urlopen(get_url) as r:
        assert r.read() == b"presigned body"
    tampered = get_url.replace("X-Amz-Signature=", "X-Amz-Signature=0")
    try:
        urllib.request.urlopen(tampered)
        raise AssertionError("tampered URL accepted")
    except urllib.error.HTTPError as e:
        assert e.code == 403
        assert xml_code(e.read())[0] == "SignatureDoesNotMatch"


def test_error_xml():
    b = fresh_bucket("suite-errors")
    s3.put_object(Bucket=b, Key="ten", Body=b"0123456789")
    status, _, body = raw("GET", f"/{b}/ten", secret="wrong-secret")
    assert status == 403 and xml_code(body)[0] == "SignatureDoesNotMatch", (status, body)
    status, _, body = raw("GET", "/no-such-bucket/key")
    code, root = xml_code(body)
    assert status == 404 and code == "NoSuchBucket" and root.findtext("BucketName") == "no-such-bucket", body
    status, headers, body = raw("GET", f"/{b}/ten", headers={"Range": "bytes=100-200"})
    assert status == 416 and xml_code(body)[0] == "InvalidRange", (status, body)
    assert headers["Content-Range"] == "bytes */10", headers
    status, _, body = raw("GET", f"/{b}/nope")
    code, root = xml_code(body)
    assert status == 404 and code == "NoSuchKey" and root.findtext("Key") == "nope", body
    status, _, body = raw("PUT", f"/{b}/x", body=b"abc", headers={"Content-MD5": base64.b64encode(b"0" * 16).decode()})
    assert status == 400 and xml_code(body)[0] == "BadDigest", (status, body)
    # No credentials at all.
    try:
        urllib.request.urlopen(f"{ENDPOINT}/{b}/ten")
        raise AssertionError("anonymous read allowed")
    except urllib.error.HTTPError as e:
        assert e.code == 403 and xml_code(e.read())[0] == "AccessDenied"
    bad = client(secret="wrong")
    expect_error("SignatureDoesNotMatch", 403, bad.get_object, Bucket=b, Key="ten")


def _sign(key, msg):
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def _chunked_put(bucket, key, data, chunk, signed, trailer, corrupt=False):
    """An aws-chunked upload built here, independently of the server's code: the seed
    signature by botocore's signer, chunk and trailer signatures by hand (AWS's documented
    string-to-sign)."""
    mode = ("STREAMING-AWS4-HMAC-SHA256-PAYLOAD" + ("-TRAILER" if trailer else "")) if signed \
        else "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
    url = f"{ENDPOINT}/{bucket}/{key}"
    crc = base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()
    headers = {"x-amz-content-sha256": mode, "Content-Encoding": "aws-chunked",
               "x-amz-decoded-content-length": str(len(data))}
    if trailer:
        headers["x-amz-trailer"] = "x-amz-checksum-crc32"
    pieces = [data[i:i + chunk] for i in range(0, len(data), chunk)] + [b""]
    # Content-Length must be known before signing: build the body with placeholder
    # signatures of the right length first.
    def frame(sigs, trailer_sig):
        out = b""
        for p, s in zip(pieces, sigs):
            head = f"{len(p):x}" + (f";chunk-signature={s}" if signed else "")
            out += head.encode() + b"\r\n" + p + (b"\r\n" if p else b"")
        if trailer:
            out += f"x-amz-checksum-crc32:{crc}\r\n".encode()
            if signed:
                out += f"x-amz-trailer-signature:{trailer_sig}\r\n".encode()
        out += b"\r\n"
        return out
    headers["Content-Length"] = str(len(frame(["0" * 64] * len(pieces), "0" * 64)))
    req = AWSRequest(method="PUT", url=url, headers=headers)
    # The generic signer keeps our x-amz-content-sha256 (the S3 one would replace it).
    SigV4Auth(Credentials(AK, SK), "s3", REGION).add_auth(req)
    sigs, trailer_sig = [], ""
    if signed:
        amz_date = req.headers["X-Amz-Date"]
        scope = f"{amz_date[:8]}/{REGION}/s3/aws4_request"
        k = _sign(("AWS4" + SK).encode(), amz_date[:8])
        k = _sign(_sign(_sign(k, REGION), "s3"), "aws4_request")
        prev = req.headers["Authorization"].split("Signature=")[1]
        empty = hashlib.sha256(b"").hexdigest()
        for p in pieces:
            sts = "\n".join(["AWS4-HMAC-SHA256-PAYLOAD", amz_date, scope, prev, empty, hashlib.sha256(p).hexdigest()])
            prev = hmac.new(k, sts.encode(), hashlib.sha256).hexdigest()
            sigs.append(prev)
        if trailer:
            block = f"x-amz-checksum-crc32:{crc}\n".encode()
            sts = "\n".join(["AWS4-HMAC-SHA256-TRAILER", amz_date, scope, prev, hashlib.sha256(block).hexdigest()])
            trailer_sig = hmac.new(k, sts.encode(), hashlib.sha256).hexdigest()
    body = frame(sigs or [""] * len(pieces), trailer_sig)
    assert len(body) == int(headers["Content-Length"])
    if corrupt:
        flipped = bytearray(body)
        flipped[len(body) // 2] ^= 0xFF
        body = bytes(flipped)
    r = urllib.request.Request(url, data=body, method="PUT", headers=dict(req.headers.items()))
    try:
        with urllib.request.urlopen(r) as resp:
            return resp.status, b""
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_aws_chunked_uploads():
    b = fresh_bucket("suite-chunked")
    data = os.urandom(200_000)
    for name, signed, trailer in [("signed", True, False), ("signed-trailer", True, True),
                                  ("unsigned-trailer", False, True)]:
        status, body = _chunked_put(b, name, data, 65536, signed, trailer)
        assert status == 200, (name, status, body)
        got = s3.get_object(Bucket=b, Key=name)
        assert got["Body"].read() == data, name
        assert "ContentEncoding" not in got, (name, got.get("ContentEncoding"))
    # A corrupted chunk is refused and stores nothing.
    status, body = _chunked_put(b, "corrupt", data, 65536, True, False, corrupt=True)
    assert status == 403 and xml_code(body)[0] == "SignatureDoesNotMatch", (status, body)
    expect_error("404", 404, s3.head_object, Bucket=b, Key="corrupt")


def test_virtual_host_style():
    # boto3 addresses `<bucket>.localhost:PORT`; a proxy setting sends it to the server
    # (nothing resolves *.localhost here), keeping the virtual host in the Host header.
    b = fresh_bucket("suite-vhost")
    port = ENDPOINT.rsplit(":", 1)[1]
    v = client(endpoint=f"http://localhost:{port}", s3={"addressing_style": "virtual"},
               proxies={"http": ENDPOINT})
    v.put_object(Bucket=b, Key="vh/key", Body=b"virtual")
    assert s3.get_object(Bucket=b, Key="vh/key")["Body"].read() == b"virtual"
    assert v.get_object(Bucket=b, Key="vh/key")["Body"].read() == b"virtual"
    assert [o["Key"] for o in v.list_objects_v2(Bucket=b)["Contents"]] == ["vh/key"]


def aws(*args, check=True):
    env = dict(os.environ, AWS_ACCESS_KEY_ID=AK, AWS_SECRET_ACCESS_KEY=SK, AWS_DEFAULT_REGION="us-east-1",
               AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull, AWS_PAGER="")
    p = subprocess.run(["aws", "--endpoint-url", ENDPOINT, *args], env=env, capture_output=True, text=True)
    if check and p.returncode != 0:
        raise AssertionError(f"aws {' '.join(args)} failed ({p.returncode}): {p.stderr}")
    return p


def test_aws_cli():
    with tempfile.TemporaryDirectory() as d:
        aws("s3", "mb", "s3://cli-bucket")
        src = os.path.join(d, "hello.txt")
        with open(src, "wb") as f:
            f.write(b"hello from the aws cli\n")
        aws("s3", "cp", src, "s3://cli-bucket/dir/hello.txt")
        ls = aws("s3", "ls", "s3://cli-bucket/dir/").stdout
        assert "hello.txt" in ls, ls
        out = os.path.join(d, "out.txt")
        aws("s3", "cp", "s3://cli-bucket/dir/hello.txt", out)
        assert open(out, "rb").read() == b"hello from the aws cli\n"
        tree = os.path.join(d, "tree")
        os.makedirs(os.path.join(tree, "sub"))
        for name in ["a.txt", "sub/b.txt", "sub/c d.txt"]:
            with open(os.path.join(tree, name), "w") as f:
                f.write(name)
        aws("s3", "sync", tree, "s3://cli-bucket/sync/")
        listed = aws("s3", "ls", "--recursive", "s3://cli-bucket/sync/").stdout
        for name in ["a.txt", "sub/b.txt", "sub/c d.txt"]:
            assert "sync/" + name in listed, listed
        big = os.path.join(d, "big.bin")
        data = os.urandom(20 * MIB)
        with open(big, "wb") as f:
            f.write(data)
        aws("s3", "cp", big, "s3://cli-bucket/big.bin")
        head = aws("s3api", "head-object", "--bucket", "cli-bucket", "--key", "big.bin").stdout
        assert '"ContentLength": %d' % len(data) in head and '-3\\""' in head, head
        back = os.path.join(d, "big.back")
        aws("s3", "cp", "s3://cli-bucket/big.bin", back)
        assert open(back, "rb").read() == data
        missing = aws("s3", "cp", "s3://cli-bucket/nope", out, check=False)
        assert missing.returncode != 0 and "404" in missing.stderr, missing.stderr
        aws("s3", "rm", "--recursive", "s3://cli-bucket/")
        aws("s3", "rb", "s3://cli-bucket")
        assert "cli-bucket" not in aws("s3", "ls").stdout


TESTS = {name[5:]: fn for name, fn in sorted(globals().items()) if name.startswith("test_")}


def main():
    names = sys.argv[1:] or list(TESTS)
    passed = failed = 0
    for n in names:
        try:
            TESTS[n]()
            print(f"ok   {n}", flush=True)
            passed += 1
        except Exception:
            print(f"FAIL {n}\n{traceback.format_exc()}", flush=True)
            failed += 1
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
