"""The object store as its users see it, on both backends (a local directory and S3 through moto)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from boto3.s3.transfer import TransferConfig

from emilia_store import LocalStore, S3Store, cached_copy, delete_prefix, iter_objects
from resources.object_store import ObjectStoreResource

TRICKY_KEYS = ["a/b.mp3", "a-c.mp3", "a.mp3", "ab/x.mp3", "a/b/c.mp3", "a/b0.mp3", "a0", "A.mp3", "a_b.mp3"]


def _keys(page) -> list[str]:
    return [o.key for o in page.objects]


def _all_files(root: Path) -> list[Path]:
    return [Path(d) / f for d, _, files in os.walk(root) for f in files]


# --- bytes --------------------------------------------------------------------------------------------------


def test_put_get_bytes_round_trip(any_store):
    data = bytes(range(256)) * 10
    any_store.put_bytes("dir/sub/blob.bin", data)
    assert any_store.get_bytes("dir/sub/blob.bin") == data


def test_put_bytes_overwrites(any_store):
    any_store.put_bytes("k.txt", b"first version, longer")
    any_store.put_bytes("k.txt", b"second")
    assert any_store.get_bytes("k.txt") == b"second"


def test_empty_object(any_store):
    any_store.put_bytes("empty", b"")
    assert any_store.exists("empty")
    assert any_store.get_bytes("empty") == b""


def test_get_missing_raises_key_error(any_store):
    with pytest.raises(KeyError):
        any_store.get_bytes("no/such/key.bin")


def test_exists_and_delete(any_store):
    assert not any_store.exists("x/y.bin")
    any_store.put_bytes("x/y.bin", b"1")
    assert any_store.exists("x/y.bin")
    any_store.delete("x/y.bin")
    assert not any_store.exists("x/y.bin")
    with pytest.raises(KeyError):
        any_store.get_bytes("x/y.bin")


def test_delete_missing_is_a_no_op(any_store):
    any_store.delete("never/written.bin")
    assert not any_store.exists("never/written.bin")


def test_exists_is_false_for_a_key_prefix(any_store):
    any_store.put_bytes("dir/file.bin", b"1")
    assert not any_store.exists("dir")
    assert not any_store.exists("dir/")


@pytest.mark.parametrize("missing", ["dir", "dir/file.bin/below"])
def test_prefix_or_path_below_an_object_is_missing(any_store, missing: str, tmp_path: Path):
    # locally "dir" is a directory and "dir/file.bin" a file; to a user both keys just do not exist, as on S3
    any_store.put_bytes("dir/file.bin", b"1")
    assert not any_store.exists(missing)
    with pytest.raises(KeyError):
        any_store.get_bytes(missing)
    with pytest.raises(KeyError):
        any_store.get_file(missing, tmp_path / "out.bin")
    any_store.delete(missing)  # a no-op, and it leaves the real object alone
    assert any_store.get_bytes("dir/file.bin") == b"1"


# --- files --------------------------------------------------------------------------------------------------


def test_put_get_file_round_trip(any_store, tmp_path: Path):
    src = tmp_path / "src.bin"
    payload = os.urandom(3 * 2**20 + 17)
    src.write_bytes(payload)
    any_store.put_file(src, "files/big.bin")
    dst = tmp_path / "dst.bin"
    any_store.get_file("files/big.bin", dst)
    assert dst.read_bytes() == payload
    assert any_store.get_bytes("files/big.bin") == payload


def test_get_file_missing_raises_key_error(any_store, tmp_path: Path):
    with pytest.raises(KeyError):
        any_store.get_file("files/missing.bin", tmp_path / "out.bin")


def test_s3_multipart_upload_round_trip(s3_store, tmp_path: Path):
    store = S3Store(s3_store.client, s3_store.bucket)
    store.transfer = TransferConfig(multipart_threshold=5 * 2**20, multipart_chunksize=5 * 2**20)
    src = tmp_path / "twelve.bin"
    payload = os.urandom(12 * 2**20 + 123)
    src.write_bytes(payload)
    store.put_file(src, "big/twelve.bin")

    head = store.client.head_object(Bucket=store.bucket, Key="big/twelve.bin")
    assert "-" in head["ETag"], head["ETag"]  # multipart ETags are "<md5 of md5s>-<parts>"
    assert head["ContentLength"] == len(payload)

    dst = tmp_path / "back.bin"
    store.get_file("big/twelve.bin", dst)
    assert dst.read_bytes() == payload
    # the object is visible through the store that opened the bucket too
    assert s3_store.exists("big/twelve.bin")


def test_s3_small_file_is_a_single_put(s3_store, tmp_path: Path):
    src = tmp_path / "small.bin"
    src.write_bytes(b"x" * 1000)
    s3_store.put_file(src, "small.bin")
    head = s3_store.client.head_object(Bucket=s3_store.bucket, Key="small.bin")
    assert "-" not in head["ETag"]


# --- listing ------------------------------------------------------------------------------------------------


def test_list_page_pagination(any_store):
    keys = [f"p/k{i:02d}.bin" for i in range(25)]
    for k in reversed(keys):
        any_store.put_bytes(k, k.encode())
    pages, start = [], None
    while True:
        page = any_store.list_page("p/", start_after=start, max_keys=10)
        pages.append(page)
        if not page.truncated:
            break
        start = page.objects[-1].key
    assert [len(p.objects) for p in pages] == [10, 10, 5]
    assert [p.truncated for p in pages] == [True, True, False]
    assert [k for p in pages for k in _keys(p)] == sorted(keys)


def test_list_page_exact_multiple_is_not_truncated(any_store):
    for i in range(20):
        any_store.put_bytes(f"p/k{i:02d}", b"1")
    first = any_store.list_page("p/", max_keys=10)
    assert first.truncated
    second = any_store.list_page("p/", start_after=first.objects[-1].key, max_keys=10)
    assert len(second.objects) == 10
    assert not second.truncated
    third = any_store.list_page("p/", start_after=second.objects[-1].key, max_keys=10)
    assert third.objects == [] and not third.truncated


def test_list_page_start_after(any_store):
    keys = [f"s/{c}.bin" for c in "abcdefg"]
    for k in keys:
        any_store.put_bytes(k, b"1")
    assert _keys(any_store.list_page("s/", start_after="s/c.bin")) == keys[3:]
    # a cursor that is not itself a key resumes at the next key after it
    assert _keys(any_store.list_page("s/", start_after="s/c")) == keys[2:]
    assert _keys(any_store.list_page("s/", start_after="s/g.bin")) == []
    assert _keys(any_store.list_page("s/", start_after="")) == keys


def test_list_page_start_after_across_directories(any_store):
    keys = sorted(["r/a/1", "r/a/2", "r/b/1", "r/b/c/1", "r/b/c/2", "r/b0", "r/c"])
    for k in keys:
        any_store.put_bytes(k, b"1")
    for i, cursor in enumerate(keys):
        assert _keys(any_store.list_page("r/", start_after=cursor)) == keys[i + 1 :], cursor


def test_list_page_prefix_filtering(any_store):
    for k in ["raw_audio/en/a/1.mp3", "raw_audio/en/b/2.mp3", "raw_audio/de/a/3.mp3", "raw_audiox/4.mp3",
              "processed/en/5.json", "raw.txt"]:
        any_store.put_bytes(k, b"1")
    assert _keys(any_store.list_page("raw_audio/")) == [
        "raw_audio/de/a/3.mp3", "raw_audio/en/a/1.mp3", "raw_audio/en/b/2.mp3",
    ]
    assert _keys(any_store.list_page("raw_audio/en/")) == ["raw_audio/en/a/1.mp3", "raw_audio/en/b/2.mp3"]
    # a prefix is a string prefix, not a directory: it may end inside a name
    assert _keys(any_store.list_page("raw_audio/e")) == ["raw_audio/en/a/1.mp3", "raw_audio/en/b/2.mp3"]
    assert _keys(any_store.list_page("raw")) == [
        "raw.txt", "raw_audio/de/a/3.mp3", "raw_audio/en/a/1.mp3", "raw_audio/en/b/2.mp3", "raw_audiox/4.mp3",
    ]
    assert _keys(any_store.list_page("nothing/")) == []
    assert len(_keys(any_store.list_page(""))) == 6


def test_tricky_key_order_matches_across_backends(local_store, s3_store):
    for store in (local_store, s3_store):
        for k in TRICKY_KEYS:
            store.put_bytes(k, b"1")
    local = _keys(local_store.list_page(""))
    s3 = _keys(s3_store.list_page(""))
    assert local == sorted(TRICKY_KEYS)
    assert local == s3
    # and page by page with a cursor, the order stays the same
    local_paged = [o.key for o in _paged(local_store, "", 2)]
    s3_paged = [o.key for o in _paged(s3_store, "", 2)]
    assert local_paged == s3_paged == sorted(TRICKY_KEYS)
    # and below a prefix that ends inside a name
    assert _keys(local_store.list_page("a")) == _keys(s3_store.list_page("a"))
    assert _keys(local_store.list_page("a/b")) == _keys(s3_store.list_page("a/b")) == [
        "a/b.mp3", "a/b/c.mp3", "a/b0.mp3",
    ]


def _paged(store, prefix: str, max_keys: int):
    start = None
    while True:
        page = store.list_page(prefix, start_after=start, max_keys=max_keys)
        yield from page.objects
        if not page.truncated:
            return
        start = page.objects[-1].key


def test_unicode_key_order_matches_s3_byte_order(local_store, s3_store):
    keys = ["u/z.mp3", "u/é.mp3", "u/日本.mp3", "u/Z.mp3", "u/e.mp3"]
    for store in (local_store, s3_store):
        for k in keys:
            store.put_bytes(k, b"1")
    expected = sorted(keys, key=lambda k: k.encode("utf-8"))
    assert _keys(local_store.list_page("u/")) == expected
    assert _keys(s3_store.list_page("u/")) == expected


def test_listing_sizes_and_modified(any_store):
    before = time.time()
    any_store.put_bytes("m/one", b"1")
    any_store.put_bytes("m/three", b"333")
    any_store.put_bytes("m/zero", b"")
    objs = {o.key: o for o in any_store.list_page("m/").objects}
    assert {k: o.size for k, o in objs.items()} == {"m/one": 1, "m/three": 3, "m/zero": 0}
    for o in objs.values():
        assert before - 5 <= o.modified <= time.time() + 5


# --- safety -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["../escape.bin", "a/../../escape.bin", "a/..", "..", "a\\b.bin", "a\x00b"])
def test_unsafe_keys_are_refused(any_store, key: str, tmp_path: Path):
    with pytest.raises(ValueError):
        any_store.put_bytes(key, b"1")
    src = tmp_path / "f.bin"
    src.write_bytes(b"1")
    with pytest.raises(ValueError):
        any_store.put_file(src, key)
    assert not (tmp_path / "escape.bin").exists()
    assert _keys(any_store.list_page("")) == []


def test_dots_inside_names_are_fine(any_store):
    any_store.put_bytes("a..b/c...mp3", b"1")
    assert any_store.get_bytes("a..b/c...mp3") == b"1"


def test_absolute_key_stays_inside_the_store(any_store):
    any_store.put_bytes("/abs/key.bin", b"1")
    assert _keys(any_store.list_page("")) == ["abs/key.bin"]
    assert any_store.get_bytes("abs/key.bin") == b"1"


def test_local_store_confines_files_to_its_root(tmp_path: Path):
    store = LocalStore(tmp_path / "root")
    store.put_bytes("/etc/x.bin", b"1")
    assert (tmp_path / "root" / "etc" / "x.bin").read_bytes() == b"1"
    assert all(p.is_relative_to(tmp_path / "root") for p in _all_files(tmp_path))


def test_local_write_is_atomic_and_temp_files_are_hidden(local_store: LocalStore, tmp_path: Path):
    local_store.put_bytes("d/a.bin", b"abc")
    src = tmp_path / "src.bin"
    src.write_bytes(b"x" * 100_000)
    local_store.put_file(src, "d/b.bin")
    names = [p.name for p in _all_files(local_store.root)]
    assert sorted(names) == ["a.bin", "b.bin"]
    assert not any(n.startswith(".tmp-") for n in names)

    # a stray temp file (a writer killed mid-write) is never listed, neither as a file nor as a directory
    (local_store.root / "d" / ".tmp-xyz").write_bytes(b"half")
    (local_store.root / ".tmp-dir").mkdir()
    (local_store.root / ".tmp-dir" / "inner.bin").write_bytes(b"half")
    assert _keys(local_store.list_page("")) == ["d/a.bin", "d/b.bin"]
    assert _keys(local_store.list_page("d/")) == ["d/a.bin", "d/b.bin"]
    assert [o.key for o in iter_objects(local_store, "")] == ["d/a.bin", "d/b.bin"]


def test_local_failed_write_leaves_no_temp_file(local_store: LocalStore, tmp_path: Path):
    with pytest.raises(FileNotFoundError):
        local_store.put_file(tmp_path / "does-not-exist.bin", "d/x.bin")
    assert not local_store.exists("d/x.bin")
    assert _all_files(local_store.root) == []


# --- helpers ------------------------------------------------------------------------------------------------


def test_iter_objects_walks_all_pages(any_store, monkeypatch: pytest.MonkeyPatch):
    keys = sorted(f"it/{i:03d}" for i in range(23))
    for k in keys:
        any_store.put_bytes(k, b"1")
    any_store.put_bytes("other/x", b"1")

    # force small pages so iter_objects has to follow the cursor
    original = type(any_store).list_page
    calls: list[str | None] = []

    def small_pages(self, prefix, start_after=None, max_keys=1000, token=None):
        calls.append(start_after)
        return original(self, prefix, start_after=start_after, max_keys=min(max_keys, 5), token=token)

    monkeypatch.setattr(type(any_store), "list_page", small_pages)
    assert [o.key for o in iter_objects(any_store, "it/")] == keys
    assert len(calls) == 5
    assert [o.key for o in iter_objects(any_store, "it/", start_after="it/020")] == keys[21:]


def test_iter_objects_empty_prefix(any_store):
    assert list(iter_objects(any_store, "none/")) == []


def test_delete_prefix_removes_exactly_the_prefix(any_store):
    doomed = [f"processed/ep1/{i:03d}.json" for i in range(12)] + ["processed/ep1/sub/deep.bin"]
    kept = ["processed/ep10/000.json", "processed/ep1.json", "processed/ep0/x", "raw/ep1/000.json"]
    for k in doomed + kept:
        any_store.put_bytes(k, b"1")
    assert delete_prefix(any_store, "processed/ep1/") == len(doomed)
    assert [o.key for o in iter_objects(any_store, "")] == sorted(kept)
    assert delete_prefix(any_store, "processed/ep1/") == 0


def test_cached_copy(any_store, tmp_path: Path):
    any_store.put_bytes("raw/ep.mp3", b"audio-bytes")
    cache = tmp_path / "cache"
    first = cached_copy(any_store, "raw/ep.mp3", cache)
    assert first.read_bytes() == b"audio-bytes"
    assert cached_copy(any_store, "raw/ep.mp3", cache) == first
    assert not any(p.name.startswith(".tmp-") for p in _all_files(cache))
    with pytest.raises(KeyError):
        cached_copy(any_store, "raw/missing.mp3", cache)


# --- the Dagster resource -----------------------------------------------------------------------------------


def test_resource_without_bucket_is_local(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    store = ObjectStoreResource().open()
    assert isinstance(store, LocalStore)
    assert store.root == (tmp_path / "data").resolve()
    store = ObjectStoreResource(local_root=str(tmp_path / "elsewhere")).open()
    assert isinstance(store, LocalStore)
    store.put_bytes("k", b"v")
    assert (tmp_path / "elsewhere" / "k").read_bytes() == b"v"
    assert store.describe().startswith("local:")


def test_resource_with_bucket_is_s3(s3_env: dict[str, str]):
    def resource(**kw) -> ObjectStoreResource:
        return ObjectStoreResource(
            bucket=s3_env["R2_BUCKET"], endpoint_url=s3_env["R2_ENDPOINT_URL"],
            access_key_id=s3_env["R2_ACCESS_KEY_ID"], secret_access_key=s3_env["R2_SECRET_ACCESS_KEY"],
            region_name=s3_env["R2_REGION"], **kw,
        )

    store = resource().open()
    assert isinstance(store, S3Store)
    assert s3_env["R2_BUCKET"] in store.describe()
    store.put_bytes("raw_audio/en/src/ep.mp3", b"mp3")
    assert store.get_bytes("raw_audio/en/src/ep.mp3") == b"mp3"
    assert store.exists("raw_audio/en/src/ep.mp3")
    assert _keys(store.list_page("raw_audio/")) == ["raw_audio/en/src/ep.mp3"]

    # a key prefix isolates two layouts in one bucket, and keys come back relative to it
    a = resource(key_prefix="team-a").open()
    b = resource(key_prefix="/team-b/").open()
    a.put_bytes("x/1", b"a")
    b.put_bytes("x/1", b"b")
    assert a.get_bytes("x/1") == b"a" and b.get_bytes("x/1") == b"b"
    assert _keys(a.list_page("x/")) == ["x/1"]
    assert _keys(a.list_page("", start_after="x/0")) == ["x/1"]
    raw = store.client.list_objects_v2(Bucket=s3_env["R2_BUCKET"])["Contents"]
    assert sorted(o["Key"] for o in raw) == ["raw_audio/en/src/ep.mp3", "team-a/x/1", "team-b/x/1"]
    with pytest.raises(ValueError):
        resource(key_prefix="../up").open()
