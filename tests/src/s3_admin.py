"""S3 operations the sshgw tests need beyond what sshgw's own S3 client does.

usage: s3_admin.py ENDPOINT ACCESS_KEY SECRET_KEY COMMAND [ARGS...]

Commands (each prints exactly one JSON object on stdout):
  ping                                   -> {"buckets": [names]}
  create-locked-bucket BUCKET DAYS       -> {"bucket", "versioning", "retention_days"}
      Object Lock enabled at creation (so versioning is on), default COMPLIANCE retention
      of DAYS days, lifecycle rule AbortIncompleteMultipartUpload after 1 day.
  head BUCKET KEY [VERSION]              -> {"size", "version_id", "etag", "lock_mode",
                                             "retain_until", "legal_hold", "metadata"}
  get BUCKET KEY VERSION|- OUT           -> {"size", "version_id"} (body written to OUT)
  list-versions BUCKET PREFIX            -> {"versions": [{"key", "version_id", "size",
                                             "is_latest"}], "delete_markers": [{"key",
                                             "version_id", "is_latest"}]}
  delete-version BUCKET KEY VERSION      -> {"deleted": true}
  delete BUCKET KEY                      -> {"delete_marker", "version_id"} (no version id)
  list-multipart-uploads BUCKET          -> {"uploads": [{"key", "upload_id"}]}
  list-objects BUCKET PREFIX             -> {"keys": [...]}
  put BUCKET KEY FILE [--if-none-match] [--meta K=V]...
                                         -> {"version_id", "etag"}
  put-multipart BUCKET KEY FILE PART_SIZE
                                         -> {"version_id", "etag", "parts"}
  create-multipart BUCKET KEY            -> {"upload_id"}
  abort-multipart BUCKET KEY UPLOAD_ID   -> {"aborted": true}
  put-retention BUCKET KEY VERSION MODE UNTIL_ISO
                                         -> {"ok": true}

An S3 error is printed as {"error": CODE, "status": HTTP_STATUS, "message": ...} and the
script exits 3 (also for a server that does not answer: CODE "ConnectionError", status
null); any other failure raises (exit 1).
"""

import datetime
import json
import os
import sys

# Never read the user's AWS configuration, and never ask an instance metadata service.
os.environ["AWS_CONFIG_FILE"] = os.devnull
os.environ["AWS_SHARED_CREDENTIALS_FILE"] = os.devnull
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
for var in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL",
            "AWS_ENDPOINT_URL_S3", "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
    os.environ.pop(var, None)

import boto3  # noqa: E402
from botocore.config import Config  # noqa: E402
from botocore.exceptions import ClientError, ConnectionError as BotoConnectionError  # noqa: E402


def client(endpoint, access_key, secret_key):
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        region_name="us-east-1",
        config=Config(
            s3={"addressing_style": "path"},
            retries={"max_attempts": 1, "mode": "standard"},
            connect_timeout=5,
            read_timeout=30,
        ),
    )


def iso(value):
    if isinstance(value, datetime.datetime):
        return value.astimezone(datetime.timezone.utc).isoformat()
    return value


def ping(s3):
    return {"buckets": [b["Name"] for b in s3.list_buckets().get("Buckets", [])]}


def create_locked_bucket(s3, bucket, days):
    days = int(days)
    s3.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    s3.put_object_lock_configuration(
        Bucket=bucket,
        ObjectLockConfiguration={
            "ObjectLockEnabled": "Enabled",
            "Rule": {"DefaultRetention": {"Mode": "COMPLIANCE", "Days": days}},
        },
    )
    s3.put_bucket_lifecycle_configuration(
        Bucket=bucket,
        LifecycleConfiguration={
            "Rules": [
                {
                    "ID": "abort-incomplete-multipart",
                    "Status": "Enabled",
                    "Filter": {"Prefix": ""},
                    "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1},
                }
            ]
        },
    )
    versioning = s3.get_bucket_versioning(Bucket=bucket).get("Status")
    lock = s3.get_object_lock_configuration(Bucket=bucket)["ObjectLockConfiguration"]
    retention = lock.get("Rule", {}).get("DefaultRetention", {})
    return {
        "bucket": bucket,
        "versioning": versioning,
        "object_lock": lock.get("ObjectLockEnabled"),
        "retention_mode": retention.get("Mode"),
        "retention_days": retention.get("Days"),
    }


def version_arg(version):
    return {} if version in (None, "", "-") else {"VersionId": version}


def head(s3, bucket, key, version=None):
    r = s3.head_object(Bucket=bucket, Key=key, **version_arg(version))
    return {
        "size": r["ContentLength"],
        "version_id": r.get("VersionId"),
        "etag": r.get("ETag"),
        "lock_mode": r.get("ObjectLockMode"),
        "retain_until": iso(r.get("ObjectLockRetainUntilDate")),
        "legal_hold": r.get("ObjectLockLegalHoldStatus"),
        "metadata": r.get("Metadata", {}),
    }


def get(s3, bucket, key, version, out):
    r = s3.get_object(Bucket=bucket, Key=key, **version_arg(version))
    size = 0
    with open(out, "wb") as f:
        for chunk in r["Body"].iter_chunks(1 << 20):
            f.write(chunk)
            size += len(chunk)
    return {"size": size, "version_id": r.get("VersionId")}


def list_versions(s3, bucket, prefix):
    versions, markers = [], []
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=prefix):
        for v in page.get("Versions", []):
            versions.append({"key": v["Key"], "version_id": v["VersionId"], "size": v["Size"],
                             "is_latest": v["IsLatest"]})
        for m in page.get("DeleteMarkers", []):
            markers.append({"key": m["Key"], "version_id": m["VersionId"],
                            "is_latest": m["IsLatest"]})
    return {"versions": versions, "delete_markers": markers}


def delete_version(s3, bucket, key, version):
    s3.delete_object(Bucket=bucket, Key=key, VersionId=version)
    return {"deleted": True}


def delete(s3, bucket, key):
    r = s3.delete_object(Bucket=bucket, Key=key)
    return {"delete_marker": r.get("DeleteMarker", False), "version_id": r.get("VersionId")}


def list_multipart_uploads(s3, bucket):
    r = s3.list_multipart_uploads(Bucket=bucket)
    return {"uploads": [{"key": u["Key"], "upload_id": u["UploadId"],
                         "initiated": iso(u.get("Initiated"))} for u in r.get("Uploads", [])]}


def list_objects(s3, bucket, prefix):
    keys = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys.extend(o["Key"] for o in page.get("Contents", []))
    return {"keys": keys}


def put(s3, bucket, key, path, *opts):
    extra = {}
    metadata = {}
    opts = list(opts)
    while opts:
        opt = opts.pop(0)
        if opt == "--if-none-match":
            extra["IfNoneMatch"] = "*"
        elif opt == "--meta":
            k, _, v = opts.pop(0).partition("=")
            metadata[k] = v
        else:
            raise SystemExit(f"put: unknown option {opt}")
    if metadata:
        extra["Metadata"] = metadata
    with open(path, "rb") as f:
        r = s3.put_object(Bucket=bucket, Key=key, Body=f, **extra)
    return {"version_id": r.get("VersionId"), "etag": r.get("ETag")}


def put_multipart(s3, bucket, key, path, part_size):
    part_size = int(part_size)
    upload = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    parts = []
    with open(path, "rb") as f:
        number = 1
        while True:
            data = f.read(part_size)
            if not data and number > 1:
                break
            r = s3.upload_part(Bucket=bucket, Key=key, UploadId=upload, PartNumber=number,
                               Body=data)
            parts.append({"PartNumber": number, "ETag": r["ETag"]})
            number += 1
            if len(data) < part_size:
                break
    r = s3.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload,
                                     MultipartUpload={"Parts": parts})
    return {"version_id": r.get("VersionId"), "etag": r.get("ETag"), "parts": len(parts)}


def create_multipart(s3, bucket, key):
    return {"upload_id": s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]}


def abort_multipart(s3, bucket, key, upload_id):
    s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
    return {"aborted": True}


def put_retention(s3, bucket, key, version, mode, until):
    s3.put_object_retention(
        Bucket=bucket, Key=key, **version_arg(version),
        Retention={"Mode": mode, "RetainUntilDate": datetime.datetime.fromisoformat(until)},
    )
    return {"ok": True}


COMMANDS = {
    "ping": ping,
    "create-locked-bucket": create_locked_bucket,
    "head": head,
    "get": get,
    "list-versions": list_versions,
    "delete-version": delete_version,
    "delete": delete,
    "list-multipart-uploads": list_multipart_uploads,
    "list-objects": list_objects,
    "put": put,
    "put-multipart": put_multipart,
    "create-multipart": create_multipart,
    "abort-multipart": abort_multipart,
    "put-retention": put_retention,
}


def main(argv):
    if len(argv) < 5 or argv[4] not in COMMANDS:
        raise SystemExit(__doc__)
    endpoint, access_key, secret_key, command = argv[1:5]
    s3 = client(endpoint, access_key, secret_key)
    try:
        result = COMMANDS[command](s3, *argv[5:])
    except ClientError as err:
        error = err.response.get("Error", {})
        print(json.dumps({
            "error": error.get("Code") or "Unknown",
            "status": err.response.get("ResponseMetadata", {}).get("HTTPStatusCode"),
            "message": error.get("Message", str(err)),
        }))
        return 3
    except BotoConnectionError as err:
        # Not answering (yet): the harness polls `ping` until the server is up.
        print(json.dumps({"error": "ConnectionError", "status": None, "message": str(err)}))
        return 3
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
