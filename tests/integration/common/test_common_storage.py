"""ObjectStore against a real S3 server (SeaweedFS, as the embedded stack runs it)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from linesight.common import storage
from linesight.common.storage import ObjectNotFound, ObjectStore, S3Config, StorageUnavailable

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def store(s3: Any) -> ObjectStore:
    st = ObjectStore(S3Config(s3.endpoint, s3.access_key, s3.secret_key, s3.secure))
    st.ensure_buckets()
    st.ensure_buckets()  # idempotent
    return st


def test_content_addressed_put_is_idempotent_and_round_trips(store: ObjectStore) -> None:
    data = b"\x89PNG fake " + uuid.uuid4().bytes
    ref = store.put_content_addressed(
        storage.BUCKET_FRAMES, data, metadata={"Station": "st1", "part-id": "P7"}
    )
    digest = storage.sha256_hex(data)
    assert (ref.bucket, ref.key, ref.sha256, ref.size_bytes) == (
        "frames",
        f"{digest[:2]}/{digest}.png",
        digest,
        len(data),
    )
    again = store.put_content_addressed(storage.BUCKET_FRAMES, data, metadata={"station": "other"})
    assert again == ref
    assert store.get_bytes(ref.bucket, ref.key) == data
    assert store.get_ref(ref) == data
    meta = store.metadata(ref.bucket, ref.key)
    assert meta["station"] == "st1" and meta["part-id"] == "P7" and meta["sha256"] == digest
    head = store.head(ref.bucket, ref.key)
    assert head.sha256 == digest and head.size_bytes == len(data) and head.content_type == "image/png"
    assert ref.key in list(store.list_keys(storage.BUCKET_FRAMES, prefix=digest[:2]))


def test_missing_objects_and_buckets_are_object_not_found(store: ObjectStore) -> None:
    assert not store.exists(storage.BUCKET_FRAMES, "zz/missing.png")
    with pytest.raises(ObjectNotFound) as err:
        store.get_bytes(storage.BUCKET_FRAMES, "zz/missing.png")
    assert (err.value.bucket, err.value.key) == ("frames", "zz/missing.png")
    with pytest.raises(ObjectNotFound):
        store.head("no-such-bucket-x", "k")


def test_put_into_missing_bucket_says_how_to_fix(store: ObjectStore) -> None:
    with pytest.raises(StorageUnavailable, match="ensure_buckets"):
        store.put_bytes("no-such-bucket-y", "k", b"x")


def test_presigned_url_is_fetchable_without_credentials(store: ObjectStore) -> None:
    ref = store.put_bytes(storage.BUCKET_REPORTS, f"t/{uuid.uuid4().hex}.txt", b"report body", "text/plain")
    url = store.presigned_get_url(ref.bucket, ref.key, expires_s=60)
    response = httpx.get(url, timeout=10)
    assert response.status_code == 200 and response.content == b"report body"
    assert httpx.get(url.split("?")[0], timeout=10).status_code in (401, 403)


def test_corrupt_object_is_detected_by_sha(store: ObjectStore) -> None:
    ref = store.put_bytes(storage.BUCKET_HEATMAPS, f"t/{uuid.uuid4().hex}", b"original")
    store.put_bytes(ref.bucket, ref.key, b"replaced")
    with pytest.raises(StorageUnavailable, match="does not match sha256"):
        store.get_ref(ref)


def test_files_round_trip(store: ObjectStore, tmp_path: Path) -> None:
    src = tmp_path / "model.tar"
    src.write_bytes(b"m" * 300_000)
    ref = store.put_file(storage.BUCKET_MODELS, f"t/{uuid.uuid4().hex}/model.tar", src)
    assert ref.sha256 == storage.sha256_hex(src.read_bytes()) and ref.size_bytes == 300_000
    out = store.get_file(ref.bucket, ref.key, tmp_path / "out" / "model.tar")
    assert out.read_bytes() == src.read_bytes()
    store.delete(ref.bucket, ref.key)
    assert not store.exists(ref.bucket, ref.key)


async def test_async_wrappers(store: ObjectStore) -> None:
    data = uuid.uuid4().bytes
    ref = await store.aput_content_addressed(storage.BUCKET_FRAMES, data)
    assert await store.aget_bytes(ref.bucket, ref.key) == data
    assert await store.aexists(ref.bucket, ref.key)
    await store.aping()


def test_wrong_credentials_are_refused_with_the_code(s3: Any) -> None:
    bad = ObjectStore(S3Config(s3.endpoint, s3.access_key, "wrong-secret"))
    with pytest.raises(StorageUnavailable, match=r"SignatureDoesNotMatch|AccessDenied|InvalidAccessKeyId"):
        bad.get_bytes(storage.BUCKET_FRAMES, "ab/x")
