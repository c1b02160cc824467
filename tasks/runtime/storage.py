"""Artifact storage by URI: local paths (or ``file://``) and ``s3://`` through boto3.

boto3 takes its endpoint, credentials and retry policy from the standard AWS
environment (``AWS_ENDPOINT_URL_S3``/``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``,
``AWS_MAX_ATTEMPTS``, ``AWS_RETRY_MODE``...), so nothing here is S3-vendor specific.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterator
from urllib.parse import urlparse


class StorageError(RuntimeError):
    pass


@dataclass(frozen=True)
class Entry:
    uri: str
    relative: str
    size: int
    version: str  # mtime for files, ETag for objects: changes when the content does


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def local_path(uri: str) -> Path:
    if uri.startswith("file://"):
        return Path(urlparse(uri).path)
    if "://" in uri:
        raise StorageError(f"unsupported URI scheme in {uri!r}: use a local path, file:// or s3://")
    return Path(uri)


def join(uri: str, *parts: str) -> str:
    return "/".join([uri.rstrip("/"), *(p.strip("/") for p in parts)])


def _split_s3(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    if not parsed.netloc:
        raise StorageError(f"{uri!r} has no bucket")
    return parsed.netloc, parsed.path.lstrip("/")


@functools.cache
def _s3():
    import boto3
    from botocore.config import Config

    # s3v4 everywhere: S3-compatible servers (MinIO, rclone) refuse the older signatures.
    return boto3.client("s3", config=Config(signature_version="s3v4"))


def _s3_call(what: str, uri: str, fn, *args, **kwargs):
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return fn(*args, **kwargs)
    except ClientError as err:
        code = err.response.get("Error", {}).get("Code", "")
        raise StorageError(f"S3 {what} {uri}: {code} {err}") from err
    except BotoCoreError as err:
        raise StorageError(f"S3 {what} {uri}: {err}") from err


def exists(uri: str) -> bool:
    if not is_s3(uri):
        return local_path(uri).exists()
    from botocore.exceptions import ClientError

    bucket, key = _split_s3(uri)
    try:
        _s3().head_object(Bucket=bucket, Key=key)
        return True
    except ClientError as err:
        if err.response.get("Error", {}).get("Code") in {"404", "NoSuchKey", "NotFound"}:
            return False
        raise StorageError(f"S3 head {uri}: {err}") from err


def read_bytes(uri: str) -> bytes:
    if not is_s3(uri):
        try:
            return local_path(uri).read_bytes()
        except OSError as err:
            raise StorageError(f"cannot read {uri}: {err.strerror}") from err
    bucket, key = _split_s3(uri)
    body = _s3_call("get", uri, _s3().get_object, Bucket=bucket, Key=key)["Body"]
    return body.read()


def read_text(uri: str) -> str:
    return read_bytes(uri).decode("utf-8")


def write_bytes(uri: str, data: bytes) -> None:
    """Whole-object write; on a local disk through a temporary file and a rename, so never half-written."""
    if is_s3(uri):
        bucket, key = _split_s3(uri)
        _s3_call("put", uri, _s3().put_object, Bucket=bucket, Key=key, Body=data)
        return
    path = local_path(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=False) as tmp:
        tmp.write(data)
    os.replace(tmp.name, path)


def write_text(uri: str, text: str) -> None:
    write_bytes(uri, text.encode("utf-8"))


def delete(uri: str) -> None:
    if is_s3(uri):
        bucket, key = _split_s3(uri)
        _s3_call("delete", uri, _s3().delete_object, Bucket=bucket, Key=key)
    else:
        local_path(uri).unlink(missing_ok=True)


def delete_tree(uri: str) -> None:
    if not is_s3(uri):
        shutil.rmtree(local_path(uri), ignore_errors=True)
        return
    for entry in list_files(uri):
        delete(entry.uri)


def list_files(uri: str) -> list[Entry]:
    """Every file under ``uri`` (or ``uri`` itself when it is a file), sorted by relative name."""
    if not is_s3(uri):
        root = local_path(uri)
        if root.is_file():
            stat = root.stat()
            return [Entry(str(root), root.name, stat.st_size, str(stat.st_mtime_ns))]
        entries = []
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            stat = path.stat()
            entries.append(Entry(str(path), path.relative_to(root).as_posix(), stat.st_size, str(stat.st_mtime_ns)))
        return entries
    bucket, key = _split_s3(uri)
    prefix = key.rstrip("/")
    paginator = _s3().get_paginator("list_objects_v2")
    entries = []
    for page in _s3_call("list", uri, lambda: list(paginator.paginate(Bucket=bucket, Prefix=prefix))):
        for obj in page.get("Contents", []):
            name = obj["Key"]
            if name == prefix:
                relative = name.rsplit("/", 1)[-1]
            elif name.startswith(prefix + "/") or not prefix:
                relative = name[len(prefix) + 1 :] if prefix else name
            else:
                continue  # a sibling that shares the prefix, e.g. "mix2" next to "mix"
            entries.append(Entry(f"s3://{bucket}/{name}", relative, obj["Size"], obj["ETag"].strip('"')))
    return sorted(entries, key=lambda e: e.relative)


def list_dirs(uri: str) -> list[str]:
    """Immediate sub-folders of ``uri`` (as URIs)."""
    if not is_s3(uri):
        root = local_path(uri)
        return [str(p) for p in sorted(root.iterdir()) if p.is_dir()] if root.is_dir() else []
    bucket, key = _split_s3(uri)
    prefix = key.rstrip("/") + "/" if key else ""
    paginator = _s3().get_paginator("list_objects_v2")
    dirs = []
    for page in _s3_call("list", uri, lambda: list(paginator.paginate(Bucket=bucket, Prefix=prefix, Delimiter="/"))):
        dirs.extend(f"s3://{bucket}/{p['Prefix'].rstrip('/')}" for p in page.get("CommonPrefixes", []))
    return sorted(dirs)


def fingerprint(uri: str) -> str:
    """A digest of the names, sizes and versions of everything under ``uri``: it moves when the data does."""
    entries = list_files(uri)
    if not entries:
        raise StorageError(f"input {uri} does not exist or is empty")
    digest = hashlib.sha256()
    for entry in entries:
        digest.update(f"{entry.relative}\0{entry.size}\0{entry.version}\n".encode())
    return digest.hexdigest()[:16]


def open_read(uri: str) -> IO[bytes]:
    """A binary stream: a local file, or an S3 object streamed without loading it whole."""
    if not is_s3(uri):
        try:
            return open(local_path(uri), "rb")
        except OSError as err:
            raise StorageError(f"cannot read {uri}: {err.strerror}") from err
    bucket, key = _split_s3(uri)
    raw = _s3_call("get", uri, _s3().get_object, Bucket=bucket, Key=key)["Body"]._raw_stream
    raw.auto_close = False  # else urllib3 closes the stream under the buffered reader at its end
    return io.BufferedReader(raw, buffer_size=1 << 20)


def download(uri: str, dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    if is_s3(uri):
        bucket, key = _split_s3(uri)
        _s3_call("download", uri, _s3().download_file, bucket, key, str(dest))
    else:
        shutil.copyfile(local_path(uri), dest)
    return dest


def localize(uri: str, scratch: Path, include=lambda relative: True) -> Path:
    """A local folder holding ``uri``'s files: the folder itself when local, else a download into ``scratch``."""
    if not is_s3(uri):
        return local_path(uri)
    for entry in list_files(uri):
        if include(entry.relative):
            download(entry.uri, scratch / entry.relative)
    return scratch


def upload(path: Path, uri: str) -> None:
    """One local file to ``uri`` (an S3 object, or a local path)."""
    if is_s3(uri):
        bucket, key = _split_s3(uri)
        _s3_call("upload", uri, _s3().upload_file, str(path), bucket, key)
    else:
        dest = local_path(uri)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, dest)


def upload_tree(local_dir: Path, uri: str, skip: set[str] = frozenset()) -> None:
    for path in sorted(p for p in local_dir.rglob("*") if p.is_file()):
        relative = path.relative_to(local_dir).as_posix()
        if relative not in skip:
            upload(path, join(uri, relative))


def iter_lines(stream: IO[bytes], max_line_bytes: int) -> Iterator[bytes | None]:
    """Lines of a binary stream in bounded memory; an over-long line is consumed and yielded as ``None``."""
    while True:
        line = stream.readline(max_line_bytes + 1)
        if not line:
            return
        if len(line) > max_line_bytes and not line.endswith(b"\n"):
            while True:  # skip the rest of the over-long line without holding it
                rest = stream.readline(1 << 20)
                if not rest or rest.endswith(b"\n"):
                    break
            yield None
            continue
        yield line
