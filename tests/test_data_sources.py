"""Task sources: local folders, the synthetic suite, and on-demand download against a local HTTP server."""

from __future__ import annotations

import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from itstudy.config import DataConfig, SyntheticConfig
from itstudy.data.sources import (
    DownloadSource,
    LocalFolderSource,
    SourceError,
    UnknownTaskError,
    make_source,
)
from itstudy.data.superni import TaskFileError
from itstudy.data.synthetic import GENERATOR_VERSION, write_synthetic_suite

COMMIT = "0123456789abcdef0123456789abcdef01234567"
TASK = "synth_numbers_parity"


# --- a fake SuperNI repository served over HTTP -------------------------------------------------


class FakeRepository:
    """Serves `<root>/<relative>` at `/<commit>/<relative>` with HTTP Range support, and logs requests."""

    def __init__(self, root: Path):
        self.root = root
        self.requests: list[tuple[str, str | None]] = []
        self.cut_after: int | None = None  # send only this many body bytes, then drop the connection
        repository = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's naming)
                repository.requests.append((self.path, self.headers.get("Range")))
                relative = self.path.removeprefix(f"/{COMMIT}/")
                path = repository.root / relative
                if relative == self.path or not path.is_file():
                    self.send_error(404)
                    return
                body = path.read_bytes()
                start = int(self.headers["Range"].removeprefix("bytes=").rstrip("-")) if self.headers.get("Range") else 0
                if start >= len(body) and start:
                    self.send_response(416)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206 if start else 200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                sent = body[start:]
                if repository.cut_after is not None:
                    sent, repository.cut_after = sent[: repository.cut_after], None
                    self.wfile.write(sent)
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(sent)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def bytes_of(self, relative: str) -> bytes:
        return (self.root / relative).read_bytes()


@pytest.fixture(scope="module")
def remote_tree(tmp_path_factory) -> Path:
    return write_synthetic_suite(tmp_path_factory.mktemp("remote"), SyntheticConfig(instances_per_task=20))


@pytest.fixture
def repository(remote_tree):
    repo = FakeRepository(remote_tree)
    repo.thread.start()
    yield repo
    repo.server.shutdown()
    repo.server.server_close()


@pytest.fixture
def cache(tmp_path) -> Path:
    return tmp_path / "download-cache"


def _source(repository: FakeRepository, cache: Path) -> DownloadSource:
    return DownloadSource(repository.url, COMMIT, cache)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- downloads ------------------------------------------------------------------------------------


def test_download_fetches_only_what_is_asked_verifies_and_records_sha256(repository, cache):
    source = _source(repository, cache)
    names = source.task_names("test", "default")
    assert "synth_comparison_larger" in names
    task = source.load_task(TASK)
    assert task.name == TASK and len(task.instances) == 20
    assert task.source_file == f"{repository.url}/{COMMIT}/tasks/{TASK}.json"

    relative = f"tasks/{TASK}.json"
    assert (cache / relative).read_bytes() == repository.bytes_of(relative)
    index = json.loads((cache / "index.json").read_text())
    assert index == {
        relative: _sha256(repository.bytes_of(relative)),
        "splits/default/test_tasks.txt": _sha256(repository.bytes_of("splits/default/test_tasks.txt")),
    }
    assert not list(cache.rglob("*.part"))
    assert [path for path, _ in repository.requests] == [f"/{COMMIT}/splits/default/test_tasks.txt", f"/{COMMIT}/{relative}"]


def test_cached_files_are_used_without_the_network(repository, cache):
    _source(repository, cache).load_task(TASK)
    repository.server.shutdown()
    repository.server.server_close()
    assert _source(repository, cache).load_task(TASK).name == TASK


def test_an_interrupted_download_resumes_with_a_range_request(repository, cache):
    relative = f"tasks/{TASK}.json"
    full = repository.bytes_of(relative)
    repository.cut_after = 1000
    with pytest.raises(SourceError, match="1000 bytes kept in .*run again to resume"):
        _source(repository, cache).load_task(TASK)
    assert (cache / f"{relative}.part").read_bytes() == full[:1000]

    task = _source(repository, cache).load_task(TASK)
    assert task.name == TASK
    assert repository.requests[-1] == (f"/{COMMIT}/{relative}", "bytes=1000-")
    assert (cache / relative).read_bytes() == full
    assert not (cache / f"{relative}.part").exists()


def test_a_truncated_part_file_is_resumed(repository, cache):
    relative = f"tasks/{TASK}.json"
    full = repository.bytes_of(relative)
    (cache / "tasks").mkdir(parents=True)
    (cache / f"{relative}.part").write_bytes(full[: len(full) // 2])
    _source(repository, cache).load_task(TASK)
    assert repository.requests == [(f"/{COMMIT}/{relative}", f"bytes={len(full) // 2}-")]
    assert (cache / relative).read_bytes() == full


def test_a_part_file_that_is_not_the_start_of_the_file_is_fetched_whole(repository, cache):
    relative = f"tasks/{TASK}.json"
    (cache / "tasks").mkdir(parents=True)
    (cache / f"{relative}.part").write_bytes(b"garbage that does not begin a task file")
    task = _source(repository, cache).load_task(TASK)
    assert task.name == TASK
    assert [header for _, header in repository.requests] == ["bytes=39-", None]
    assert (cache / relative).read_bytes() == repository.bytes_of(relative)


def test_a_corrupted_cached_file_is_refused_and_fetched_again(repository, cache):
    relative = f"tasks/{TASK}.json"
    _source(repository, cache).load_task(TASK)
    cached = cache / relative
    cached.write_bytes(cached.read_bytes().replace(b'"odd"', b'"ODD"', 1))  # still valid JSON, wrong bytes
    task = _source(repository, cache).load_task(TASK)
    assert len(repository.requests) == 2
    assert cached.read_bytes() == repository.bytes_of(relative)
    assert "ODD" not in {output for instance in task.instances for output in instance.outputs}


def test_a_served_file_that_is_not_a_task_is_refused_and_not_cached(repository, cache):
    (repository.root / "tasks" / "task_bad.json").write_text('{"Definition": ["x"]}')
    with pytest.raises(TaskFileError, match=r"task_bad.json: field '.*': missing$"):
        _source(repository, cache).load_task("task_bad")
    assert not (cache / "tasks" / "task_bad.json").exists()
    assert "tasks/task_bad.json" not in json.loads((cache / "index.json").read_text() if (cache / "index.json").exists() else "{}")


def test_an_unknown_task_name_is_one_line_naming_task_and_source(repository, cache):
    with pytest.raises(UnknownTaskError) as caught:
        _source(repository, cache).load_task("task000_no_such_task")
    message = str(caught.value)
    assert "\n" not in message
    assert "task 'task000_no_such_task'" in message and COMMIT in message and "404" in message


def test_offline_without_a_cache_says_how_to_use_a_local_copy(cache):
    offline = DownloadSource("http://127.0.0.1:9", COMMIT, cache)  # port 9 (discard): connection refused
    with pytest.raises(SourceError) as caught:
        offline.load_task(TASK)
    message = str(caught.value)
    assert "\n" not in message
    assert "not in the cache" in message and "data.superni_dir" in message and "ITSTUDY_SUPERNI_DIR" in message


# --- local folders and make_source ---------------------------------------------------------------


def test_local_folder_unknown_task_is_one_line_naming_task_and_folder(superni_dir):
    source = LocalFolderSource.checked(superni_dir, origin="test")
    with pytest.raises(UnknownTaskError) as caught:
        source.load_task("task1728_web_nlg_data_to_text")  # listed in the split, absent from the sample
    assert str(caught.value) == (
        f"task 'task1728_web_nlg_data_to_text' is not in SuperNI folder {superni_dir} "
        f"(no file tasks/task1728_web_nlg_data_to_text.json)"
    )


def test_task_names_that_are_not_file_names_are_refused(superni_dir):
    source = LocalFolderSource.checked(superni_dir, origin="test")
    with pytest.raises(UnknownTaskError, match="not a valid task name"):
        source.load_task("../MANIFEST")


def test_split_lists_are_read_in_file_order(superni_dir):
    source = LocalFolderSource.checked(superni_dir, origin="test")
    assert len(source.task_names("test", "default")) == 119
    assert len(source.task_names("train", "default")) == 756
    with pytest.raises(SourceError, match=r"splits/nope/test_tasks.txt: no such split list .*data.split='nope'"):
        source.task_names("test", "nope")


def test_make_source_prefers_config_then_environment_then_download(tmp_path, monkeypatch, superni_dir):
    monkeypatch.delenv("ITSTUDY_SUPERNI_DIR", raising=False)
    download = make_source(DataConfig(source="superni"))
    assert isinstance(download, DownloadSource)
    assert download.cache.folder == tmp_path / "cache" / "superni" / DataConfig().superni_commit  # $ITSTUDY_CACHE

    monkeypatch.setenv("ITSTUDY_SUPERNI_DIR", str(superni_dir))
    assert make_source(DataConfig(source="superni")).root == superni_dir
    configured = write_synthetic_suite(tmp_path / "other", SyntheticConfig(instances_per_task=10))
    assert make_source(DataConfig(source="superni", superni_dir=str(configured))).root == configured


def test_a_folder_without_tasks_is_refused_naming_the_setting(tmp_path):
    with pytest.raises(SourceError, match=r"^data.superni_dir=.*: not a SuperNI folder"):
        make_source(DataConfig(source="superni", superni_dir=str(tmp_path)))


def test_the_synthetic_source_is_written_once_into_the_cache(tmp_path):
    data = DataConfig(source="synthetic", synthetic=SyntheticConfig(seed=3, instances_per_task=20))
    first = make_source(data)
    # Named by the config and a digest of the generator's source: an edited generator writes anew.
    assert first.root.parent == tmp_path / "cache" / "synthetic"
    assert re.fullmatch(f"v{GENERATOR_VERSION}-seed3-n20-[0-9a-f]{{12}}", first.root.name)
    marker = first.root / "tasks" / f"{TASK}.json"
    stamp = marker.stat().st_mtime_ns
    second = make_source(data)
    assert second.root == first.root and marker.stat().st_mtime_ns == stamp
    assert second.load_task(TASK).name == TASK
    assert make_source(DataConfig(synthetic=SyntheticConfig(seed=4, instances_per_task=20))).root.name == first.root.name.replace("seed3", "seed4")
