"""Object storage over S3 with the `minio` client (MinIO in production, SeaweedFS embedded).

Buckets: `frames` (lossless PNG, content-addressed), `heatmaps`, `datasets` (immutable manifests),
`models` (versioned artifacts), `reports`. Content-addressed keys are `<sha256[:2]>/<sha256><suffix>`,
so storing the same bytes twice is one object and a retried upload is harmless.

Every call either succeeds or raises StorageUnavailable / ObjectNotFound naming bucket and key;
a failed put leaves no partial object (S3 puts are atomic) and may simply be retried.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import urllib3
from minio import Minio
from minio.error import MinioException, S3Error

from linesight.common.pb import common_pb2

if TYPE_CHECKING:
    from linesight.common.settings import Settings

log = logging.getLogger(__name__)

BUCKET_FRAMES = "frames"
BUCKET_HEATMAPS = "heatmaps"
BUCKET_DATASETS = "datasets"
BUCKET_MODELS = "models"
BUCKET_REPORTS = "reports"
BUCKETS: tuple[str, ...] = (BUCKET_FRAMES, BUCKET_HEATMAPS, BUCKET_DATASETS, BUCKET_MODELS, BUCKET_REPORTS)

META_SHA256 = "sha256"
_NOT_FOUND_CODES = {"NoSuchKey", "NoSuchBucket", "NoSuchObject", "NotFound", "ResourceNotFound"}


class StorageUnavailable(RuntimeError):  # noqa: N818 - team contract name
    """S3 could not be reached or refused the request (credentials, server error)."""


class ObjectNotFound(KeyError):  # noqa: N818 - team contract name
    """The bucket or key does not exist."""

    def __init__(self, bucket: str, key: str) -> None:
        super().__init__(f"s3://{bucket}/{key}")
        self.bucket = bucket
        self.key = key

    def __str__(self) -> str:  # KeyError would quote the message
        return f"object s3://{self.bucket}/{self.key} not found"


@dataclass(frozen=True)
class S3Config:
    """Where S3 is; `endpoint` is host:port without scheme (minio's convention)."""

    endpoint: str
    access_key: str
    secret_key: str
    secure: bool = False
    region: str = "us-east-1"

    @classmethod
    def from_settings(cls, s: Settings) -> S3Config:
        return cls(s.s3_endpoint, s.s3_access_key, s.s3_secret_key, s.s3_secure, s.s3_region)

    def __post_init__(self) -> None:
        if not self.endpoint or "://" in self.endpoint or "/" in self.endpoint:
            raise ValueError(
                f"S3 endpoint must be host:port without scheme or path, got {self.endpoint!r} "
                "(set LINESIGHT_S3_ENDPOINT, and LINESIGHT_S3_SECURE=true for https)"
            )


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def content_key(sha256: str, suffix: str = ".png") -> str:
    """`ab/abcdef...<suffix>`: two-character fan-out keeps listings of one prefix small."""
    if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise ValueError(f"not a lowercase hex sha256: {sha256!r}")
    if suffix and (not suffix.startswith(".") or "/" in suffix):
        raise ValueError(f"suffix must look like '.png', got {suffix!r}")
    return f"{sha256[:2]}/{sha256}{suffix}"


def _check_key(bucket: str, key: str) -> None:
    if not bucket or not key or key.startswith("/") or "\\" in key or any(p == ".." for p in key.split("/")):
        raise ValueError(f"invalid object address bucket={bucket!r} key={key!r}")


class ObjectStore:
    """Synchronous S3 client with error mapping; the `a*` methods run it in a worker thread."""

    def __init__(self, cfg: S3Config, *, timeout_s: float = 10.0, retries: int = 2) -> None:
        self.cfg = cfg
        # minio's default pool retries 5 times with backoff: a dead server would stall a
        # readiness probe for many seconds. Few quick retries, then a clear error.
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=min(3.0, timeout_s), read=timeout_s),
            maxsize=16,
            retries=urllib3.Retry(
                total=retries, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504], allowed_methods=None
            ),
        )
        self._client = Minio(
            cfg.endpoint,
            access_key=cfg.access_key,
            secret_key=cfg.secret_key,
            secure=cfg.secure,
            region=cfg.region,
            http_client=http,
        )

        self._known_buckets: set[str] = set()

    def _require_bucket(self, bucket: str) -> None:
        """Fail a write to a missing bucket the same way on every S3 server.

        SeaweedFS creates a bucket on the first PUT into it, MinIO refuses; a typo in a bucket
        name must not silently create a new bucket. Checked once per bucket per process.
        """
        if bucket in self._known_buckets:
            return
        try:
            found = self._client.bucket_exists(bucket)
        except (MinioException, urllib3.exceptions.HTTPError, OSError) as exc:
            self._fail(exc, "put", bucket)
        if not found:
            raise StorageUnavailable(
                f"S3 put s3://{bucket}: bucket {bucket!r} does not exist at {self._where()} "
                "(ObjectStore.ensure_buckets() creates the standard buckets)"
            )
        self._known_buckets.add(bucket)

    @property
    def client(self) -> Minio:
        """The raw minio client, for the rare call this class does not wrap."""
        return self._client

    def _where(self) -> str:
        return f"{'https' if self.cfg.secure else 'http'}://{self.cfg.endpoint}"

    def _fail(self, exc: Exception, op: str, bucket: str, key: str = "") -> NoReturn:
        target = f"s3://{bucket}/{key}" if key else f"s3://{bucket}"
        if isinstance(exc, S3Error):
            if exc.code == "NoSuchBucket" and op == "put":
                raise StorageUnavailable(
                    f"S3 put {target}: bucket {bucket!r} does not exist at {self._where()} "
                    "(ObjectStore.ensure_buckets() creates the standard buckets)"
                ) from exc
            if exc.code in _NOT_FOUND_CODES:
                raise ObjectNotFound(bucket, key) from exc
            raise StorageUnavailable(
                f"S3 {op} {target} at {self._where()} refused: {exc.code}: {exc.message}"
            ) from exc
        raise StorageUnavailable(
            f"S3 {op} {target} failed: cannot reach {self._where()} ({type(exc).__name__}: {exc}); "
            "is the server running? check LINESIGHT_S3_ENDPOINT"
        ) from exc

    # ---- buckets -------------------------------------------------------------------------

    def ensure_buckets(self, buckets: tuple[str, ...] = BUCKETS) -> None:
        """Create the standard buckets if missing (idempotent, safe with concurrent starters)."""
        for bucket in buckets:
            try:
                if not self._client.bucket_exists(bucket):
                    self._client.make_bucket(bucket, location=self.cfg.region)
                    log.info("created bucket %s", bucket)
                self._known_buckets.add(bucket)
            except S3Error as exc:
                if exc.code in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    continue
                self._fail(exc, "make_bucket", bucket)
            except (MinioException, urllib3.exceptions.HTTPError, OSError) as exc:
                self._fail(exc, "make_bucket", bucket)

    def ping(self) -> None:
        """Cheap reachability check for /readyz; raises StorageUnavailable."""
        try:
            self._client.bucket_exists(BUCKET_FRAMES)
        except (MinioException, urllib3.exceptions.HTTPError, OSError) as exc:
            self._fail(exc, "ping", BUCKET_FRAMES)

    # ---- write ---------------------------------------------------------------------------

    def put_bytes(
        self,
        bucket: str,
        key: str,
        data: bytes,
        content_type: str = "application/octet-stream",
        metadata: Mapping[str, str] | None = None,
    ) -> common_pb2.ObjectRef:
        """Store `data` at bucket/key (overwrites); the returned ref carries sha256 and size."""
        _check_key(bucket, key)
        digest = sha256_hex(data)
        meta = {**_clean_metadata(metadata), META_SHA256: digest}
        self._require_bucket(bucket)
        try:
            self._client.put_object(
                bucket,
                key,
                io.BytesIO(data),
                len(data),
                content_type=content_type,
                metadata=meta,  # type: ignore[arg-type]
            )
        except (MinioException, urllib3.exceptions.HTTPError, OSError) as exc:
            self._fail(exc, "put", bucket, key)
        return common_pb2.ObjectRef(
            bucket=bucket, key=key, sha256=digest, content_type=content_type, size_bytes=len(data)
        )

    def put_content_addressed(
        self,
        bucket: str,
        data: bytes,
        suffix: str = ".png",
        content_type: str = "image/png",
        metadata: Mapping[str, str] | None = None,
    ) -> common_pb2.ObjectRef:
        """Store under `sha256[:2]/sha256<suffix>`; bytes already there are not uploaded again.

        When the object exists its metadata is left as first written (the content is the same).
        """
        digest = sha256_hex(data)
        key = content_key(digest, suffix)
        try:
            stat = self._client.stat_object(bucket, key)
        except S3Error as exc:
            if exc.code not in _NOT_FOUND_CODES or exc.code == "NoSuchBucket":
                self._fail(exc, "put", bucket, key)
        except (MinioException, urllib3.exceptions.HTTPError, OSError) as exc:
            self._fail(exc, "put", bucket, key)
        else:
            if stat.size == len(data):
                return common_pb2.ObjectRef(
                    bucket=bucket, key=key, sha256=digest, content_type=content_type, size_bytes=len(data)
                )
            log.warning("s3://%s/%s has size %s, expected %d; rewriting", bucket, key, stat.size, len(data))
        return self.put_bytes(bucket, key, data, content_type, metadata)

    def put_file(
        self,
        bucket: str,
        key: str,
        path: str | Path,
        content_type: str = "application/octet-stream",
        metadata: Mapping[str, str] | None = None,
    ) -> common_pb2.ObjectRef:
        """Upload a (possibly large) file in parts; sha256 is computed while reading it once first."""
        _check_key(bucket, key)
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"cannot upload {path}: not a file")
        h = hashlib.sha256()
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        digest = h.hexdigest()
        meta = {**_clean_metadata(metadata), META_SHA256: digest}
        self._require_bucket(bucket)
        try:
            self._client.fput_object(bucket, key, str(path), content_type=content_type, metadata=meta)  # type: ignore[arg-type]
        except (MinioException, urllib3.exceptions.HTTPError, OSError) as exc:
            self._fail(exc, "put", bucket, key)
        return common_pb2.ObjectRef(
            bucket=bucket, key=key, sha256=digest, content_type=content_type, size_bytes=path.stat().st_size
        )

    def delete(self, bucket: str, key: str) -> None:
        """Remove an object; deleting a missing object is not an error (S3 semantics)."""
        _check_key(bucket, key)
        try:
            self._client.remove_object(bucket, key)
        except (MinioException, urllib3.exceptions.HTTPError, OSError) as exc:
            self._fail(exc, "delete", bucket, key)

    # ---- read ----------------------------------------------------------------------------

    def get_bytes(self, bucket: str, key: str) -> bytes:
        _check_key(bucket, key)
        response = None
        try:
            response = self._client.get_object(bucket, key)
            return response.read()
        except (MinioException, urllib3.exceptions.HTTPError, OSError) as exc:
            self._fail(exc, "get", bucket, key)
        finally:
            if response is not None:
                response.close()
                response.release_conn()

    def get_ref(self, ref: common_pb2.ObjectRef, *, verify: bool = True) -> bytes:
        """Bytes of an ObjectRef; with `verify`, a sha256 mismatch raises StorageUnavailable."""
        data = self.get_bytes(ref.bucket, ref.key)
        if verify and ref.sha256 and sha256_hex(data) != ref.sha256:
            raise StorageUnavailable(
                f"s3://{ref.bucket}/{ref.key} content does not match sha256 {ref.sha256[:12]}… "
                "(corrupt or replaced)"
            )
        return data

    def get_file(self, bucket: str, key: str, path: str | Path) -> Path:
        """Download to `path` (parents created); minio writes a temp file and renames it."""
        _check_key(bucket, key)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._client.fget_object(bucket, key, str(path))
        except (MinioException, urllib3.exceptions.HTTPError, OSError) as exc:
            self._fail(exc, "get", bucket, key)
        return path

    def head(self, bucket: str, key: str) -> common_pb2.ObjectRef:
        """ObjectRef from the object's stat (sha256 from our metadata, '' if written by others)."""
        _check_key(bucket, key)
        try:
            stat = self._client.stat_object(bucket, key)
        except (MinioException, urllib3.exceptions.HTTPError, OSError) as exc:
            self._fail(exc, "stat", bucket, key)
        return common_pb2.ObjectRef(
            bucket=bucket,
            key=key,
            sha256=self.metadata_of(stat.metadata).get(META_SHA256, ""),
            content_type=stat.content_type or "",
            size_bytes=int(stat.size or 0),
        )

    def metadata(self, bucket: str, key: str) -> dict[str, str]:
        """User metadata (`x-amz-meta-*`) with lower-case keys, prefix stripped."""
        _check_key(bucket, key)
        try:
            stat = self._client.stat_object(bucket, key)
        except (MinioException, urllib3.exceptions.HTTPError, OSError) as exc:
            self._fail(exc, "stat", bucket, key)
        return self.metadata_of(stat.metadata)

    @staticmethod
    def metadata_of(raw: Mapping[str, str] | None) -> dict[str, str]:
        out: dict[str, str] = {}
        for k, v in (raw or {}).items():
            lk = k.lower()
            if lk.startswith("x-amz-meta-"):
                out[lk[len("x-amz-meta-") :]] = v
        return out

    def exists(self, bucket: str, key: str) -> bool:
        _check_key(bucket, key)
        try:
            self._client.stat_object(bucket, key)
        except S3Error as exc:
            if exc.code in _NOT_FOUND_CODES:
                return False
            self._fail(exc, "stat", bucket, key)
        except (MinioException, urllib3.exceptions.HTTPError, OSError) as exc:
            self._fail(exc, "stat", bucket, key)
        return True

    def list_keys(self, bucket: str, prefix: str = "") -> Iterator[str]:
        """Keys under `prefix`, recursively, in S3 order."""
        try:
            for obj in self._client.list_objects(bucket, prefix=prefix or None, recursive=True):
                if obj.object_name is not None:
                    yield obj.object_name
        except (MinioException, urllib3.exceptions.HTTPError, OSError) as exc:
            self._fail(exc, "list", bucket, prefix)

    def presigned_get_url(self, bucket: str, key: str, expires_s: int = 3600) -> str:
        """A URL anyone can GET for `expires_s` seconds (1 s .. 7 days, the S3 limit).

        Signing is local (the region is configured), so this works even while S3 is down.
        """
        _check_key(bucket, key)
        if not 1 <= expires_s <= 7 * 24 * 3600:
            raise ValueError(f"expires_s must be between 1 and 604800 (7 days), got {expires_s}")
        try:
            return self._client.presigned_get_object(bucket, key, expires=timedelta(seconds=expires_s))
        except (MinioException, urllib3.exceptions.HTTPError, OSError) as exc:
            self._fail(exc, "presign", bucket, key)

    # ---- async wrappers ------------------------------------------------------------------

    async def aput_bytes(
        self,
        bucket: str,
        key: str,
        data: bytes,
        content_type: str = "application/octet-stream",
        metadata: Mapping[str, str] | None = None,
    ) -> common_pb2.ObjectRef:
        return await asyncio.to_thread(self.put_bytes, bucket, key, data, content_type, metadata)

    async def aput_content_addressed(
        self,
        bucket: str,
        data: bytes,
        suffix: str = ".png",
        content_type: str = "image/png",
        metadata: Mapping[str, str] | None = None,
    ) -> common_pb2.ObjectRef:
        return await asyncio.to_thread(
            self.put_content_addressed, bucket, data, suffix, content_type, metadata
        )

    async def aget_bytes(self, bucket: str, key: str) -> bytes:
        return await asyncio.to_thread(self.get_bytes, bucket, key)

    async def aget_ref(self, ref: common_pb2.ObjectRef, *, verify: bool = True) -> bytes:
        return await asyncio.to_thread(self.get_ref, ref, verify=verify)

    async def aexists(self, bucket: str, key: str) -> bool:
        return await asyncio.to_thread(self.exists, bucket, key)

    async def aping(self) -> None:
        await asyncio.to_thread(self.ping)


def _clean_metadata(metadata: Mapping[str, str] | None) -> dict[str, str]:
    """S3 metadata travels in HTTP headers: ASCII keys/values without newlines."""
    out: dict[str, str] = {}
    for k, v in (metadata or {}).items():
        key = str(k).lower()
        value = str(v)
        if not key or not all(c.isalnum() or c in "-_" for c in key):
            raise ValueError(f"invalid S3 metadata key {k!r}: letters, digits, '-' and '_' only")
        if not value.isascii() or "\n" in value or "\r" in value:
            raise ValueError(f"invalid S3 metadata value for {k!r}: ASCII without newlines only")
        out[key] = value
    return out
