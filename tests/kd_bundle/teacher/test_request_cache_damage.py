"""The request cache on real damaged, locked and shared SQLite files: paid answers that can be read are never lost.

Which answers a damaged file can still give back is computed from the file before it is damaged: SQLite's dbstat
table lists the table's leaf pages in key order, so each answer's page is known, and an answer counts as readable
exactly when its page survived (the tree's root page is checked to survive too).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from contextlib import contextmanager
from pathlib import Path

import pytest

from kd_bundle.cli_errors import EXIT_DATA_ERROR, run_cli
from kd_bundle.teacher import RequestCache, RequestCacheLocked, TeacherClient, TeacherConfig, request_cache_path
from tests.kd_bundle.openai_stub import StubOpenAI, teacher_env  # noqa: F401  (fixtures are used by name)

ROOT = Path(__file__).resolve().parents[3]
N = 300


def _key(n: int) -> str:
    return hashlib.sha256(f"request {n}".encode()).hexdigest()


def _row(n: int) -> dict:
    # ~400 bytes a row: about ten answers to a 4 KiB page, so a cache of 300 spans ~30 leaf pages
    return {"model": "m", "endpoint": "e", "request": f"request {n} " + "x" * 300, "text": f"answer {n}",
            "finish_reason": "stop", "prompt_tokens": n, "completion_tokens": 1, "cost": 0.0, "latency_s": 0.1,
            "answered_at": float(n)}


def _filled(path: Path, n: int = N) -> None:
    cache = RequestCache(path)
    for i in range(n):
        cache.put(_key(i), _row(i))
    cache._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # every answer in the main file, none in the WAL
    cache.close()


def _pages(path: Path) -> tuple[int, int, dict[str, int]]:
    """(page size, the table's root page, request key -> the leaf page holding its row) of a sound cache."""
    db = sqlite3.connect(path)
    try:
        try:
            leaves = db.execute("SELECT pageno, ncell FROM dbstat WHERE name = 'answers' AND pagetype = 'leaf' "
                                "ORDER BY path").fetchall()
        except sqlite3.OperationalError:
            pytest.skip("this SQLite has no dbstat table to map rows to pages")
        keys = [k for (k,) in db.execute("SELECT request_key FROM answers ORDER BY rowid")]
        root = db.execute("SELECT rootpage FROM sqlite_master WHERE name = 'answers'").fetchone()[0]
        page_size = db.execute("PRAGMA page_size").fetchone()[0]
    finally:
        db.close()
    page_of, rows = {}, iter(keys)
    for pageno, ncell in leaves:
        for _ in range(ncell):
            page_of[next(rows)] = pageno
    assert len(page_of) == len(keys)
    return page_size, root, page_of


def _reopen_and_check(path: Path, caplog, expected: set[str]) -> RequestCache:
    """Reopen the damaged cache: one warning naming it, the damaged copy beside it, exactly `expected` back."""
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="kd_bundle.teacher"):
        cache = RequestCache(path)
    lines = [r.getMessage() for r in caplog.records if r.name == "kd_bundle.teacher"]
    assert len(lines) == 1 and str(path) in lines[0], lines
    assert "\n" not in lines[0] and f"{len(expected)} answers salvaged" in lines[0]
    copies = sorted(path.parent.glob(f"{path.name}.damaged-*"))
    assert len(copies) == 1 and copies[0].name in lines[0]
    salvaged = {k for k in cache.usage()["request_key"]}
    assert salvaged == expected
    for key in expected:
        n = next(i for i in range(N) if _key(i) == key)
        assert tuple(cache.get(key)) == (f"answer {n}", "stop", n, 1)
    return cache


def _still_works(cache: RequestCache, path: Path, caplog) -> None:
    cache.put("new", {"text": "fresh", "finish_reason": "stop"})
    assert cache.get("new")[0] == "fresh"
    before = len(cache)
    cache.close()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="kd_bundle.teacher"):
        again = RequestCache(path)  # the fresh file is sound: no second repair
    assert len(again) == before and not caplog.records
    again.close()


@pytest.fixture(params=["python", "shell"])
def salvage_reader(request, monkeypatch):
    """Salvage by Python's rowid walk alone, and with the sqlite3 shell's `.recover` too where it exists."""
    if request.param == "python":
        monkeypatch.setenv("PATH", "")  # as on a machine without the shell
    elif shutil.which("sqlite3") is None:
        pytest.skip("no sqlite3 shell installed")
    return request.param


def test_a_truncated_cache_is_moved_aside_and_its_readable_answers_carried_over(tmp_path, caplog, salvage_reader):
    path = tmp_path / "requests.sqlite"
    _filled(path)
    page_size, root, page_of = _pages(path)
    kept_pages = os.path.getsize(path) // page_size // 2
    assert root <= kept_pages
    readable = {key for key, page in page_of.items() if page <= kept_pages}
    assert 0 < len(readable) < N
    os.truncate(path, kept_pages * page_size)

    cache = _reopen_and_check(path, caplog, readable) if salvage_reader == "python" else RequestCache(path)
    if salvage_reader == "shell":  # .recover may also read pages the tree no longer reaches
        assert readable <= set(cache.usage()["request_key"]) <= set(page_of)
    copy = next(tmp_path.glob("requests.sqlite.damaged-*"))
    assert copy.stat().st_size == kept_pages * page_size  # the damaged file is kept as it was found
    _still_works(cache, path, caplog)


def test_a_bit_flipped_page_loses_only_its_own_answers(tmp_path, caplog, salvage_reader):
    path = tmp_path / "requests.sqlite"
    _filled(path)
    page_size, _, page_of = _pages(path)
    leaves = sorted(set(page_of.values()))
    hit = leaves[len(leaves) // 2]
    with open(path, "r+b") as fh:  # flip the bits of the page's header: its type and cell count no longer parse
        fh.seek((hit - 1) * page_size)
        header = fh.read(8)
        fh.seek((hit - 1) * page_size)
        fh.write(bytes(b ^ 0xFF for b in header))
    readable = {key for key, page in page_of.items() if page != hit}
    assert N - 20 < len(readable) < N

    if salvage_reader == "python":
        cache = _reopen_and_check(path, caplog, readable)
    else:
        cache = RequestCache(path)
        assert readable <= set(cache.usage()["request_key"]) <= set(page_of)
    _still_works(cache, path, caplog)


def test_a_file_that_is_no_database_is_moved_aside_and_replaced(tmp_path, caplog):
    path = tmp_path / "requests.sqlite"
    path.write_text("request_key,text\nabc,an answer someone exported as CSV\n")
    with caplog.at_level(logging.WARNING, logger="kd_bundle.teacher"):
        cache = RequestCache(path)
    [line] = [r.getMessage() for r in caplog.records]
    assert str(path) in line and "file is not a database" in line and "0 answers salvaged" in line
    [copy] = tmp_path.glob("requests.sqlite.damaged-*")
    assert copy.read_text().startswith("request_key,text")
    assert len(cache) == 0
    _still_works(cache, path, caplog)


@contextmanager
def _held(path: Path, *statements: str):
    """Another process holding a lock on `path` (the statements run, then it waits until we let go)."""
    script = textwrap.dedent(f"""
        import sqlite3, sys
        db = sqlite3.connect({str(path)!r}, isolation_level=None)
        for statement in {list(statements)!r}:
            db.execute(statement)
        print("held", flush=True)
        sys.stdin.read()
    """)
    holder = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        yield
    finally:
        holder.stdin.close()
        holder.wait(10)


def test_a_write_lock_held_by_another_run_is_one_clear_error_and_never_damage(tmp_path):
    path = tmp_path / "requests.sqlite"
    _filled(path, 20)
    with _held(path, "BEGIN IMMEDIATE", "DELETE FROM answers WHERE rowid = 1"):
        cache = RequestCache(path, timeout_s=0.2)  # a reader still opens and checks a WAL file another run writes
        assert cache.get(_key(1))[0] == "answer 1"
        with pytest.raises(RequestCacheLocked) as locked:
            cache.put("new", {"text": "t"})
        cache.close()
    message = str(locked.value)
    assert str(path) in message and "another run holds it" in message and "\n" not in message
    assert not list(tmp_path.glob("*.damaged-*"))
    cache = RequestCache(path, timeout_s=0.2)  # the holder ended without committing: nothing is lost
    cache.put("new", {"text": "t"})
    assert len(cache) == 21
    cache.close()


@pytest.mark.usefixtures("teacher_env")
def test_an_exclusive_lock_stops_the_open_in_one_line_and_leaves_the_file_alone(capsys):
    path = request_cache_path()
    _filled(path, 20)
    before = path.read_bytes()
    with _held(path, "PRAGMA locking_mode=EXCLUSIVE", "BEGIN EXCLUSIVE"):
        with pytest.raises(RequestCacheLocked):
            RequestCache(path, timeout_s=0.2)
        code = run_cli("python -m kd_bundle distill", lambda: RequestCache(path, timeout_s=0.2))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == EXIT_DATA_ERROR and len(err) == 1 and str(path) in err[0] and "another run holds it" in err[0]
    assert not list(path.parent.glob("*.damaged-*")) and path.read_bytes() == before
    cache = RequestCache(path)
    assert len(cache) == 20
    cache.close()


_WRITER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from kd_bundle.teacher import RequestCache

    path, worker, n, shared, go = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), Path(sys.argv[5])
    while not go.exists():
        time.sleep(0.005)
    cache = RequestCache(Path(path))  # both open a file that does not exist yet, at the same moment
    for i in range(n):
        cache.put(f"{worker}-{i}", {"text": f"{worker} answer {i}", "prompt_tokens": i})
        if i < shared:
            cache.put(f"shared-{i}", {"text": f"shared answer {i}", "prompt_tokens": i})
    cache.close()
""")


def test_two_processes_writing_one_cache_at_once_lose_nothing(tmp_path):
    path, go, n, shared = tmp_path / "teacher" / "requests.sqlite", tmp_path / "go", 150, 50
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    writers = [subprocess.Popen([sys.executable, "-c", _WRITER, str(path), worker, str(n), str(shared), str(go)],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for worker in ("a", "b")]
    go.touch()
    results = [w.communicate(timeout=120) for w in writers]
    assert [w.returncode for w in writers] == [0, 0], [err for _, err in results]
    cache = RequestCache(path)
    expected = {f"{w}-{i}": f"{w} answer {i}" for w in ("a", "b") for i in range(n)}
    expected |= {f"shared-{i}": f"shared answer {i}" for i in range(shared)}
    assert len(cache) == len(expected)
    assert {key: cache.get(key)[0] for key in expected} == expected
    cache.close()


def test_two_runs_that_open_one_damaged_cache_at_once_repair_it_once(tmp_path):
    path, go = tmp_path / "requests.sqlite", tmp_path / "go"
    _filled(path)
    page_size, _, page_of = _pages(path)
    hit = sorted(set(page_of.values()))[5]
    with open(path, "r+b") as fh:
        fh.seek((hit - 1) * page_size)
        fh.write(b"\xff" * 8)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # A salvage as slow as on a big cache, so that both runs find the damage before either has repaired it
    slow = textwrap.dedent("""
        import time
        from kd_bundle.teacher import cache_salvage, request_cache
        def slow_salvage(*args, _salvage=cache_salvage.salvage_rows):
            time.sleep(0.5)
            return _salvage(*args)
        request_cache.salvage_rows = slow_salvage
    """)
    runs = [subprocess.Popen([sys.executable, "-c", slow + _WRITER, str(path), worker, "5", "0", str(go)], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for worker in ("a", "b")]
    go.touch()
    results = [run.communicate(timeout=120) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], [err for _, err in results]
    assert len(list(tmp_path.glob("requests.sqlite.damaged-*"))) == 1  # the second run found the fresh file sound
    cache = RequestCache(path)
    readable = {key for key, page in page_of.items() if page != hit}
    assert set(cache.usage()["request_key"]) == readable | {f"{w}-{i}" for w in ("a", "b") for i in range(5)}
    cache.close()


@pytest.mark.usefixtures("teacher_env")
def test_the_run_after_damage_pays_only_for_the_lost_answers_and_gives_the_same_results(monkeypatch):
    cfg = TeacherConfig(model="stub-teacher", max_tokens=64)
    prompts = [f"prompt {i} " + "p" * 300 for i in range(80)]
    with StubOpenAI(lambda messages: "bundle1: " + messages[-1]["content"][:10]) as stub:
        monkeypatch.setenv("KD_TEACHER_BASE_URL", stub.base_url)
        with TeacherClient(cfg) as client:
            first = client.map(lambda p: client.complete([{"role": "user", "content": p}]).text, prompts)
        path = request_cache_path()
        assert not Path(f"{path}-wal").exists()  # the last connection's close moved every answer into the file
        page_size, _, page_of = _pages(path)
        hit = sorted(set(page_of.values()))[len(set(page_of.values())) // 2]
        with open(path, "r+b") as fh:
            fh.seek((hit - 1) * page_size)
            fh.write(b"\xff" * 8)
        lost = sum(1 for page in page_of.values() if page == hit)

        stub.attempts = 0
        with TeacherClient(cfg) as client:
            again = client.map(lambda p: client.complete([{"role": "user", "content": p}]).text, prompts)
            progress = client.progress()
    assert again == first
    assert 0 < lost == stub.attempts == progress.sent and progress.cached == len(prompts) - lost


_FAKE_SHELL = '''
import sqlite3, sys
if sys.argv[2:] == [".recover"]:  # what .recover prints: the table's rows, and lost_and_found for orphaned cells
    print("""BEGIN;
CREATE TABLE answers (request_key TEXT PRIMARY KEY, model TEXT, endpoint TEXT, request TEXT, text TEXT,
  finish_reason TEXT, prompt_tokens INTEGER, completion_tokens INTEGER, cost REAL, latency_s REAL, answered_at REAL);
INSERT INTO "answers" VALUES('in-tree','m','e','r','answer in the tree','stop',1,2,0.0,0.1,1.0);
CREATE TABLE "lost_and_found"(rootpgno INTEGER, pgno INTEGER, nfield INTEGER, id INTEGER,
  c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10);
INSERT INTO "lost_and_found" VALUES(2,7,11,5,'orphan','m','e','r','answer on a cut-off page','stop',3,4,0.0,0.1,2.0);
INSERT INTO "lost_and_found"(rootpgno, pgno, nfield, id, c0, c1) VALUES(3,8,2,NULL,'an index cell',5);
COMMIT;""")
else:  # `sqlite3 OUT < script`
    sqlite3.connect(sys.argv[1]).executescript(sys.stdin.read())
'''


def test_rows_the_shells_recover_finds_are_carried_over_orphaned_pages_included(tmp_path, monkeypatch, caplog):
    """The plumbing around `.recover` (Debian's shell cannot run it): a stand-in shell prints what it would."""
    shell = tmp_path / "bin" / "sqlite3"
    shell.parent.mkdir()
    shell.write_text(f"#!{sys.executable}\n{_FAKE_SHELL}")
    shell.chmod(0o755)
    monkeypatch.setenv("PATH", str(shell.parent))
    path = tmp_path / "requests.sqlite"
    path.write_bytes(b"\x00" * 8192)  # the header is gone: no row can be reached through the table
    with caplog.at_level(logging.WARNING, logger="kd_bundle.teacher"):
        cache = RequestCache(path)
    assert "2 answers salvaged" in caplog.records[0].getMessage()
    assert tuple(cache.get("in-tree")) == ("answer in the tree", "stop", 1, 2)
    assert tuple(cache.get("orphan")) == ("answer on a cut-off page", "stop", 3, 4)
    assert len(cache) == 2
    cache.close()
