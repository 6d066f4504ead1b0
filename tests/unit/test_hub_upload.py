"""publish_files against the fake Hub: batching, skipping what is already there, retries, resume after a crash,
and a token that reaches the Authorization header and nothing else.

The fake Hub speaks huggingface_hub 2.4.0's real HTTP (tests/hub_fixture.py), so these run the library's own
create_repo / list_repo_tree / preupload / commit code paths, not mocks of them.
"""

from __future__ import annotations

import io
import logging
import tarfile
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from emilia_publish.hub import HubPublishError, HubTarget, UploadReport, _batches, git_blob_sha1, publish_files

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.hub_fixture import FakeHub

pytest_plugins = ["tests.hub_fixture"]  # the `fake_hub` and `fake_hub_factory` fixtures
pytestmark = pytest.mark.timeout(60)  # huggingface_hub's HTTP client has no timeout: a hang must not stall the suite

REPO = "emilia-test/emilia-forge"
SHARDS = 5


def _shard(index: int, samples: int = 3) -> bytes:
    """A WebDataset-like tar: `<key>.json` + `<key>.mp3` per sample, keys unique across shards."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for i in range(samples):
            key = f"EN_B{index:05d}_S{i:05d}"
            for ext, data in (("json", b'{"text": "hi %d"}' % i), ("mp3", bytes([index, i]) * 200)):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture
def release(tmp_path: Path) -> dict[str, Path]:
    """5 shards, then the index and the card: the order a release is committed in."""
    files: dict[str, Path] = {}
    for i in range(SHARDS):
        p = tmp_path / f"shard-{i:06d}.tar"
        p.write_bytes(_shard(i))
        files[f"data/en/shard-{i:06d}.tar"] = p
    (tmp_path / "index.parquet").write_bytes(b"PAR1 fake index PAR1")
    (tmp_path / "README.md").write_text("---\nlicense: cc-by-4.0\ntask_categories:\n- text-to-speech\n---\n# Emilia\n")
    files["index/index.parquet"] = tmp_path / "index.parquet"
    files["README.md"] = tmp_path / "README.md"
    return files


@pytest.fixture
def target(fake_hub: FakeHub) -> HubTarget:
    return HubTarget(REPO, token=fake_hub.token, endpoint=fake_hub.endpoint)


def _publish(target: HubTarget, files: dict[str, Path], lines: list[str] | None = None, **kwargs: object
             ) -> UploadReport:
    kwargs = {"max_files_per_commit": 4, "backoff_s": 0.0, **kwargs}
    return publish_files(target, files, log=(lines.append if lines is not None else lambda _: None), **kwargs)


def _assert_exactly_once(hub: FakeHub, files: dict[str, Path], repo: str = REPO) -> None:
    """The repo holds each file once with the local bytes, nothing else of ours, and no sample key twice."""
    remote = hub.files(repo)
    assert set(remote) - {".gitattributes"} == set(files)
    for path, local in files.items():
        assert remote[path] == local.read_bytes(), path
    keys: Counter[str] = Counter()
    for path, data in remote.items():
        if path.endswith(".tar"):
            with tarfile.open(fileobj=io.BytesIO(data)) as tar:
                keys.update({m.name.rsplit(".", 1)[0] for m in tar.getmembers()})
    assert keys and max(keys.values()) == 1, [k for k, n in keys.items() if n > 1]


def _committed(hub: FakeHub, repo: str = REPO) -> Counter[str]:
    """How many commits wrote each path."""
    return Counter(p for c in hub.commits(repo) for p in c.added)


def test_first_upload_batches_files_into_commits(fake_hub: FakeHub, target: HubTarget, release: dict[str, Path]
                                                 ) -> None:
    report = _publish(target, release)
    assert report.commits == 2 and len(fake_hub.commits(REPO)) == 2
    assert [len(c.added) for c in fake_hub.commits(REPO)] == [4, 3]
    assert fake_hub.commits(REPO)[-1].added[-2:] == ["index/index.parquet", "README.md"]  # the card lands last
    assert report.uploaded == list(release) and report.skipped == [] and report.retries == 0
    assert len(report.commit_urls) == 2
    _assert_exactly_once(fake_hub, release)


def test_second_run_uploads_nothing(fake_hub: FakeHub, target: HubTarget, release: dict[str, Path]) -> None:
    _publish(target, release)
    before = fake_hub.hits("/commit/")
    report = _publish(target, release)
    assert report.commits == 0 and report.uploaded == [] and report.skipped == list(release)
    assert fake_hub.hits("/commit/") == before and fake_hub.hits("/preupload/") == 2  # nothing even offered
    assert len(fake_hub.commits(REPO)) == 2


def test_changed_file_is_reuploaded_alone(fake_hub: FakeHub, target: HubTarget, release: dict[str, Path]) -> None:
    _publish(target, release)
    release["data/en/shard-000002.tar"].write_bytes(_shard(2, samples=4))
    report = _publish(target, release)
    assert report.uploaded == ["data/en/shard-000002.tar"] and report.commits == 1
    assert fake_hub.commits(REPO)[-1].added == ["data/en/shard-000002.tar"]
    _assert_exactly_once(fake_hub, release)


def test_superseded_files_are_deleted_in_a_last_commit_once(fake_hub: FakeHub, target: HubTarget,
                                                              release: dict[str, Path]) -> None:
    _publish(target, release)
    emptied = release.pop("data/en/shard-000003.tar")
    assert emptied.exists()
    gone = ["data/en/shard-000003.tar", "data/en/never-there.tar"]
    report = publish_files(target, release, delete=gone, log=lambda _: None, backoff_s=0.0)
    assert report.deleted == ["data/en/shard-000003.tar"] and report.uploaded == [] and report.commits == 1
    assert "data/en/shard-000003.tar" not in fake_hub.files(REPO)
    assert fake_hub.commits(REPO)[-1].deleted == ["data/en/shard-000003.tar"]
    again = publish_files(target, release, delete=gone, log=lambda _: None, backoff_s=0.0)
    assert again.deleted == [] and again.commits == 0
    _assert_exactly_once(fake_hub, release)


def test_existing_repo_and_foreign_files_are_left_alone(fake_hub: FakeHub, target: HubTarget,
                                                        release: dict[str, Path]) -> None:
    fake_hub.create(REPO, files={"NOTICE.txt": b"kept", "README.md": b"an older card\n"})
    report = _publish(target, release)
    assert "README.md" in report.uploaded and report.skipped == []
    assert fake_hub.files(REPO)["NOTICE.txt"] == b"kept"  # publishing adds, it never deletes
    assert fake_hub.files(REPO)["README.md"] == release["README.md"].read_bytes()


def test_files_the_hub_silently_drops_are_an_error(fake_hub: FakeHub, target: HubTarget, release: dict[str, Path]
                                                   ) -> None:
    """A `.gitignore` in the repo makes the Hub mark files "shouldIgnore" and huggingface_hub leaves them out of the
    commit without an error; the check after the upload turns that into one."""
    fake_hub.create(REPO, files={".gitignore": b"*.parquet\n"})
    with pytest.raises(HubPublishError, match="index/index.parquet"):
        _publish(target, release)
    assert "index/index.parquet" not in fake_hub.files(REPO)


@pytest.mark.parametrize("lost_answer", [False, True], ids=["refused", "applied-but-answer-lost"])
def test_429_then_500_mid_upload_is_retried_without_duplicates(fake_hub: FakeHub, target: HubTarget,
                                                               release: dict[str, Path], lost_answer: bool) -> None:
    fake_hub.fail_next("/commit/", 429, after=1)
    fake_hub.fail_next("/commit/", 500, after=1, apply=lost_answer)  # lost: the 2nd commit lands, the client sees 500
    lines: list[str] = []
    report = _publish(target, release, lines)
    assert report.retries >= 2
    assert sum("retry" in line for line in lines) == report.retries
    assert report.commits == 2 and sorted(report.uploaded) == sorted(release)
    assert len(fake_hub.commits(REPO)) == 2  # a landed commit is recognised, not committed twice
    # ... by listing the repo before the retry: no attempt is even prepared (preupload) for files already there
    assert fake_hub.hits("/preupload/") == fake_hub.hits("/commit/") == (3 if lost_answer else 4)
    assert set(_committed(fake_hub).values()) == {1}
    _assert_exactly_once(fake_hub, release)


def test_retries_exhausted_then_rerun_resumes(fake_hub: FakeHub, target: HubTarget, release: dict[str, Path]) -> None:
    fake_hub.fail_next("/commit/", 503, times=3, after=1)  # more failures than retries=2
    with pytest.raises(HubPublishError) as err:
        _publish(target, release, retries=2)
    assert err.value.status_code == 503 and err.value.report is not None
    first = list(release)[:4]
    assert err.value.report.uploaded == first and err.value.report.retries == 2
    assert set(fake_hub.files(REPO)) - {".gitattributes"} == set(first)

    report = _publish(target, release)
    assert report.skipped == first and report.uploaded == list(release)[4:] and report.commits == 1
    assert len(fake_hub.commits(REPO)) == 2 and set(_committed(fake_hub).values()) == {1}
    _assert_exactly_once(fake_hub, release)


def test_killed_after_first_commit_then_rerun_resumes(fake_hub: FakeHub, target: HubTarget,
                                                      release: dict[str, Path], monkeypatch: pytest.MonkeyPatch
                                                      ) -> None:
    """The process dies (no exception handling gets a say) right after the first commit landed."""
    from huggingface_hub import HfApi

    real = HfApi.create_commit
    calls = 0

    def dying(self: HfApi, *args: object, **kwargs: object) -> object:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise KeyboardInterrupt("killed")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(HfApi, "create_commit", dying)
    with pytest.raises(KeyboardInterrupt):
        _publish(target, release)
    monkeypatch.setattr(HfApi, "create_commit", real)
    ops_before = sum(len(c.added) for c in fake_hub.commits(REPO))

    report = _publish(target, release)
    assert report.commits == 1 and len(report.skipped) == 4
    assert sum(len(c.added) for c in fake_hub.commits(REPO)) - ops_before == 3  # only what was missing
    assert set(_committed(fake_hub).values()) == {1}
    _assert_exactly_once(fake_hub, release)


def test_token_goes_in_the_authorization_header_and_nowhere_else(
        fake_hub: FakeHub, target: HubTarget, release: dict[str, Path], caplog: pytest.LogCaptureFixture,
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    token = target.token
    assert token
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="huggingface_hub")  # its own level (WARNING) would drop these first
    monkeypatch.setattr(logging.getLogger("huggingface_hub"), "propagate", True)
    monkeypatch.setattr("huggingface_hub.constants.HF_DEBUG", True)  # huggingface_hub logs each request as curl
    fake_hub.fail_next("/commit/", 429, after=1)
    lines: list[str] = []
    report = _publish(target, release, lines)
    assert report.retries == 1 and lines

    assert fake_hub.requests and all(r.headers.get("authorization") == f"Bearer {token}" for r in fake_hub.requests)
    for r in fake_hub.requests:
        assert token not in r.path
        assert not [k for k, v in r.headers.items() if token in v and k != "authorization"]
    assert not [line for line in lines if token in line]
    assert any(r.name.startswith("huggingface_hub") and "curl" in r.getMessage() for r in caplog.records)
    assert token not in caplog.text and token not in capsys.readouterr().err
    assert token not in repr(report) and token not in repr(target) and token not in str(target)


def test_failures_carry_no_token(fake_hub: FakeHub, target: HubTarget, release: dict[str, Path],
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    token = target.token
    assert token
    wrong = "hf_wrongTokenWrongToken0123456789"
    lines: list[str] = []
    with pytest.raises(HubPublishError) as err:  # the Hub refuses the token: 401, not retried
        _publish(HubTarget(REPO, token=wrong, endpoint=fake_hub.endpoint), release, lines)
    assert err.value.status_code == 401
    assert wrong not in str(err.value) and wrong not in repr(err.value)
    assert err.value.__cause__ is None and err.value.__context__ is None  # the original holds the request headers

    from huggingface_hub import HfApi

    def leaky(self: HfApi, *args: object, **kwargs: object) -> object:  # an error that quotes the token
        raise ValueError(f"cannot commit with Authorization: Bearer {token}")

    monkeypatch.setattr(HfApi, "create_commit", leaky)
    with pytest.raises(HubPublishError) as err:
        _publish(target, release, lines)
    assert token not in str(err.value) and "Bearer ***" in str(err.value)
    assert not [line for line in lines if token in line or wrong in line]


def test_lfs_files_are_compared_by_sha256(fake_hub_factory: Callable[..., FakeHub], release: dict[str, Path]
                                          ) -> None:
    """Shards above the threshold go the LFS way; the listing (3 entries a page) then reports their sha256."""
    hub = fake_hub_factory(lfs_threshold=1024, page_size=3)
    target = HubTarget(REPO, token=hub.token, endpoint=hub.endpoint)
    _publish(target, release)
    shards = {p for p in release if p.endswith(".tar")}
    assert hub.lfs_paths(REPO) == shards and hub.hits("/info/lfs/objects/batch") == 2
    assert hub.hits("cursor=") >= 2  # the listing took several pages
    assert _publish(target, release).skipped == list(release)
    release["data/en/shard-000004.tar"].write_bytes(_shard(4, samples=5))
    report = _publish(target, release)
    assert report.uploaded == ["data/en/shard-000004.tar"] and hub.commits(REPO)[-1].added == report.uploaded
    _assert_exactly_once(hub, release)


def test_batches_split_by_count_and_bytes() -> None:
    items = [(f"f{i}", Path(f"f{i}"), size) for i, size in enumerate([5, 5, 5, 20, 1, 1])]
    sizes = [[i[2] for i in b] for b in _batches(items, max_files=2, max_bytes=12)]
    assert sizes == [[5, 5], [5], [20], [1, 1]]  # a file over the byte cap still goes, alone


def test_max_bytes_per_commit_is_honoured(fake_hub: FakeHub, target: HubTarget, release: dict[str, Path]) -> None:
    shard_size = release["data/en/shard-000000.tar"].stat().st_size
    report = _publish(target, release, max_files_per_commit=50, max_bytes_per_commit=2 * shard_size)
    assert [len(c.added) for c in fake_hub.commits(REPO)] == [2, 2, 3] and report.commits == 3


def test_git_blob_sha1_matches_git(tmp_path: Path) -> None:
    p = tmp_path / "hello"
    p.write_bytes(b"hello\n")
    assert git_blob_sha1(p) == "ce013625030ba8dba906f756967f9e9ca394464a"  # `git hash-object` of "hello\n"


def test_target_from_env() -> None:
    t = HubTarget.from_env({"HF_REPO_ID": "org/ds", "HF_TOKEN": "hf_x", "HF_ENDPOINT": "http://h"}, private=False)
    assert (t.repo_id, t.token, t.endpoint, t.private, t.revision) == ("org/ds", "hf_x", "http://h", False, "main")
    with pytest.raises(ValueError, match="HF_REPO_ID"):
        HubTarget.from_env({})
