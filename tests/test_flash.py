"""Flashing against a real OpenSSH server on 127.0.0.1 with a temp board root, where the board's
`campus-guide budget`, `ask` and `status` are the real commands on a tiny real GGUF: success
switches `current`, and a failed smoke test, a corrupted upload, an interrupted transfer or a
failed health check each leave the board on its previous working model."""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path

import pytest

from campus_guide.cli import main
from export import flash as flashmod
from campus_guide.bundle import ASR_DIR, MANIFEST_FILE, MODEL_FILE, SCHEMA_VERSION, Manifest, sha256_file, verify_bundle
from campus_guide.config import Config
from export.flash import FlashOptions, flash, rollback, table
from tests.sshd import start_sshd
from tests.test_bundle_asr import two_model_bundle

pytestmark = pytest.mark.models     # the board answers with the real embedded models
MB = 1 << 20


@pytest.fixture
def board(tmp_path, models_dir):
    proc, b = start_sshd(tmp_path / "ssh", models_dir)
    yield b
    b.close()
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(autouse=True)
def _gguf(tiny_gguf):
    global TINY_GGUF
    TINY_GGUF = tiny_gguf


def opts_for(b, **kw) -> FlashOptions:
    o = FlashOptions(root=str(b.root), venv=str(b.venv), config=str(b.config), port=b.port,
                     identity=b.identity, ssh_options=b.ssh_options, restart_cmd=b.restart_cmd, stop_cmd=b.stop_cmd,
                     health_timeout_s=1.0, health_interval_s=0.2)
    for k, v in kw.items():
        setattr(o, k, v)
    return o


def make_bundle(folder: Path, name: str, kind: str = "gguf") -> Path:
    """A bundle of the tiny real GGUF (its name appended after the weights, so every bundle has
    its own sha256; llama.cpp ignores trailing bytes); "truncated": its header and half its
    weights (a cut copy); "junk": no GGUF at all."""
    folder.mkdir(parents=True)
    tag = hashlib.sha256(name.encode()).digest() * 8
    real = TINY_GGUF.read_bytes()
    data = {"gguf": real + tag, "truncated": real[:len(real) // 2] + tag, "junk": b"JUNK" + tag * 40000}[kind]
    size = len(data)
    (folder / MODEL_FILE).write_bytes(data)
    m = Manifest(SCHEMA_VERSION, name, MODEL_FILE, hashlib.sha256(data).hexdigest(), size, "Q4_K_M",
                 "gemma3", "test", None, "gemma", ["<end_of_turn>", "<eos>"], [1, 106], 2048, 2048,
                 size, None, "2026-01-01T00:00:00+00:00")
    (folder / MANIFEST_FILE).write_text(json.dumps(asdict(m)))
    return folder


def flash_one(bundle, b, **kw):
    [res] = flash(bundle, [b.host], opts_for(b, **kw))
    return res


def test_flash_switches_current_restarts_and_keeps_last_n(board, tmp_path):
    for name in ("m-a", "m-b", "m-c"):
        res = flash_one(make_bundle(tmp_path / name, name), board, keep=2)
        assert res.ok, res
        assert (res.action, res.current) == ("flashed", name)
        assert board.current() == name and board.running() == name
    assert (board.root / "current").resolve() == board.root / "bundles" / "m-c"
    assert sorted(os.listdir(board.root / "bundles")) == ["m-b", "m-c"]     # keep=2: m-a pruned
    assert (board.root / "history").read_text().split() == ["m-b", "m-c"]
    assert not any((board.root / "staging").iterdir())
    again = flash_one(tmp_path / "m-c", board)
    assert again.ok and again.action == "already current"


def test_failed_smoke_test_leaves_previous_model(board, tmp_path):
    assert flash_one(make_bundle(tmp_path / "good", "good"), board).ok
    res = flash_one(make_bundle(tmp_path / "bad", "bad", "truncated"), board)
    assert not res.ok and res.step == "smoke test"        # the header plans fine; llama.cpp refuses
    assert "complete GGUF" in res.message
    assert board.current() == "good" and board.running() == "good"
    assert not (board.root / "staging" / "bad").exists() and not (board.root / "bundles" / "bad").exists()


def test_a_file_that_is_no_gguf_is_refused_by_the_budget_check(board, tmp_path):
    assert flash_one(make_bundle(tmp_path / "good", "good"), board).ok
    res = flash_one(make_bundle(tmp_path / "junk", "junk", "junk"), board)
    assert not res.ok and res.step == "budget" and "not a GGUF" in res.message
    assert board.current() == "good" and board.running() == "good"


def test_failed_switch_restarts_the_kiosk_on_the_previous_model(board, tmp_path, monkeypatch):
    assert flash_one(make_bundle(tmp_path / "a", "a"), board).ok
    monkeypatch.setattr(flashmod.Board, "switch_cmd", lambda self, name: "false")
    res = flash_one(make_bundle(tmp_path / "b", "b"), board)
    assert not res.ok and res.step == "switch"
    assert board.current() == "a" and board.running() == "a"


def test_unsafe_bundle_name_is_refused(board, tmp_path):
    folder = make_bundle(tmp_path / "evil", "evil")
    m = json.loads((folder / MANIFEST_FILE).read_text())
    (folder / MANIFEST_FILE).write_text(json.dumps({**m, "name": "../.."}))
    with pytest.raises(Exception, match="not a safe folder name"):
        flash_one(folder, board)
    assert not (board.root / "current").exists()


def test_smoke_test_runs_with_the_kiosk_stopped(board, tmp_path):
    """Two pipelines do not fit on the board: the kiosk is stopped while the new model is tried."""
    assert flash_one(make_bundle(tmp_path / "a", "a"), board).ok
    seen = board.root / "seen-during-smoke"
    smoke = FlashOptions().smoke_cmd
    res = flash_one(make_bundle(tmp_path / "b", "b"), board,
                    smoke_cmd=f"cat {{root}}/running > {seen} && {smoke}")
    assert res.ok, res
    assert seen.read_text().strip() == "stopped" and board.running() == "b"


def test_budget_refusal_leaves_previous_model(board, tmp_path):
    assert flash_one(make_bundle(tmp_path / "good", "good"), board).ok
    board.config.write_text(board.config.read_text().replace("total_gb: 6.5", "total_gb: 0.001"))
    res = flash_one(make_bundle(tmp_path / "big", "big"), board)
    assert not res.ok and res.step == "budget" and "over budget" in res.message
    assert board.current() == "good"


def test_corrupted_upload_is_refused_then_reflash_works(board, tmp_path):
    assert flash_one(make_bundle(tmp_path / "a", "a"), board).ok
    b = make_bundle(tmp_path / "b", "b")
    partial = board.root / "staging" / "b" / MODEL_FILE          # a damaged earlier attempt
    partial.parent.mkdir(parents=True)
    partial.write_bytes(b"\0" * 1000)
    res = flash_one(b, board)
    assert not res.ok and res.step == "verify" and res.resumed_from == 1000
    assert board.current() == "a" and board.running() == "a"
    assert not partial.parent.exists()                           # removed: the next try starts clean
    res = flash_one(b, board)
    assert res.ok and res.resumed_from == 0 and board.current() == "b"


def test_interrupted_transfer_keeps_previous_then_resumes(board, tmp_path, monkeypatch):
    assert flash_one(make_bundle(tmp_path / "a", "a"), board).ok
    b = make_bundle(tmp_path / "b", "b")
    real_chunks = flashmod._chunks

    def dropped(f):                                              # the link dies after 1 MiB
        it = real_chunks(f)
        yield next(it)
        raise OSError("Connection reset by peer")

    monkeypatch.setattr(flashmod, "_chunks", dropped)
    res = flash_one(b, board)
    assert not res.ok and res.step == "upload" and "resume" in res.message
    assert board.current() == "a" and board.running() == "a"
    assert (board.root / "staging" / "b" / MODEL_FILE).stat().st_size == MB
    monkeypatch.setattr(flashmod, "_chunks", real_chunks)
    res = flash_one(b, board)
    assert res.ok and res.resumed_from == MB and board.current() == "b"
    assert (board.root / "bundles" / "b" / MODEL_FILE).read_bytes() == (b / MODEL_FILE).read_bytes()


def test_unhealthy_kiosk_rolls_back(board, tmp_path):
    assert flash_one(make_bundle(tmp_path / "a", "a"), board).ok
    (board.root / "unhealthy").write_text("b\n")
    res = flash_one(make_bundle(tmp_path / "b", "b"), board)
    assert not res.ok and res.step == "health" and res.action == "rolled back"
    assert board.current() == "a" and board.running() == "a"    # switched back AND restarted
    assert not (board.root / "bundles" / "b").exists()
    assert (board.root / "history").read_text().split() == ["a"]


def test_kiosk_still_on_the_old_model_rolls_back(board, tmp_path):
    """A restart that did not restart: status reports the old model's sha256, never the new one."""
    assert flash_one(make_bundle(tmp_path / "a", "a"), board).ok
    res = flash_one(make_bundle(tmp_path / "b", "b"), board, stop_cmd="true", restart_cmd="true")
    assert not res.ok and res.step == "health" and "still runs model" in res.message
    assert board.current() == "a" and board.running() == "a"


def test_rollback_by_hand(board, tmp_path):
    for name in ("a", "b"):
        assert flash_one(make_bundle(tmp_path / name, name), board).ok
    [res] = rollback([board.host], opts_for(board))
    assert res.ok and (res.previous, res.current) == ("b", "a")
    assert board.current() == "a" and board.running() == "a"
    [res] = rollback([board.host], opts_for(board))
    assert not res.ok and "no earlier bundle" in res.message and board.current() == "a"


def test_cli_flashes_hosts_in_parallel_and_fails_if_any_fails(board, tmp_path, capsys):
    bundle = make_bundle(tmp_path / "a", "a")
    dead = "root@127.0.0.2"                                      # nothing listens there
    argv = ["flash", str(bundle), "--host", board.host, "--host", dead, "--port", str(board.port),
            "--identity", board.identity, "--root", str(board.root), "--venv", str(board.venv),
            "--board-config", str(board.config), "--restart-cmd", board.restart_cmd,
            "--health-timeout", "1"]
    for o in board.ssh_options:
        argv += ["--ssh-option", o]
    assert main(argv) == 1
    out = capsys.readouterr().out
    assert board.current() == "a"
    rows = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert "flashed" in rows[board.host] and "failed" in rows[dead] and "connect" in rows[dead]


def test_broken_local_bundle_is_never_uploaded(board, tmp_path):
    bundle = make_bundle(tmp_path / "a", "a")
    with open(bundle / MODEL_FILE, "r+b") as f:
        f.seek(100)
        f.write(b"x")
    from campus_guide.bundle import BundleError
    with pytest.raises(BundleError, match="re-flash or re-export"):
        flash(bundle, [board.host], opts_for(board))
    assert not (board.root / "staging").exists()


def test_command_templates_quote_fields_and_keep_literal_braces():
    b = flashmod.Board("pi@a", FlashOptions(venv="/opt/my venv", question="Where's B12?"))
    try:
        assert b.fill("""{venv}/bin/x --text {question} && echo '{"ready": true}'""") == \
            """'/opt/my venv'/bin/x --text 'Where'"'"'s B12?' && echo '{"ready": true}'"""
        assert b.fill("ask {question}", question="{root}") == "ask '{root}'"   # never expanded twice
    finally:
        b.close()


def test_table_lists_each_host():
    rows = table([flashmod.HostResult("pi@a", True, "flashed", current="x"),
                  flashmod.HostResult("pi@b", False, "failed", step="verify", message="bad sum")]).splitlines()
    assert len(rows) == 3 and "bad sum" in rows[2]


# --- a bundle with its own Whisper: both models travel, are smoke tested and roll back together

def test_flash_ships_both_models_and_rolls_back_both(board, tmp_path, models_dir):
    m, folder = two_model_bundle(TINY_GGUF, models_dir, tmp_path / "two")
    [first] = flash(make_bundle(tmp_path / "m-a", "m-a"), [board.host], opts_for(board))
    assert first.ok, first
    [res] = flash(folder, [board.host], opts_for(board))
    assert res.ok and res.action == "flashed", res
    live = board.root / "bundles" / m.name
    assert board.current() == m.name and verify_bundle(live) == m           # both models, intact, live
    assert (live / ASR_DIR / "model.bin").stat().st_size == (folder / ASR_DIR / "model.bin").stat().st_size
    cfg_text = board.config.read_text()
    assert "whisper-tiny.en" in cfg_text                                   # the board's own asr.model ...
    board_cfg = Config(models_dir=cfg_text.split("models_dir: ")[1].split("\n")[0])
    board_cfg.llm.model = str(board.root / "current" / "model.gguf")
    assert board_cfg.asr_path().resolve() == (live / ASR_DIR).resolve()    # ... replaced by the bundle's
    [back] = rollback([board.host], opts_for(board))
    assert back.ok and board.current() == "m-a" and board.running() == "m-a", back
    assert board_cfg.asr_path() == board_cfg.models_path("whisper-base")   # back on asr.model
    # The same pair again: already on the board, nothing uploaded.
    [again] = flash(folder, [board.host], opts_for(board))
    assert again.ok and again.action == "flashed" and board.current() == m.name, again


def test_a_whisper_that_cannot_run_fails_the_smoke_test(board, tmp_path, models_dir):
    """Checksums match (the manifest is rewritten for the junk), so only the spoken smoke test
    through the bundle's Whisper can catch it: the board stays on its previous bundle."""
    m, folder = two_model_bundle(TINY_GGUF, models_dir, tmp_path / "two")
    [first] = flash(make_bundle(tmp_path / "m-a", "m-a"), [board.host], opts_for(board))
    assert first.ok, first
    (folder / ASR_DIR / "model.bin").write_bytes(b"\0" * 4096)
    for f in m.asr.files:
        if f.path.endswith("model.bin"):
            f.sha256, f.size = sha256_file(folder / f.path), 4096
    (folder / MANIFEST_FILE).write_text(json.dumps(asdict(m)))
    [res] = flash(folder, [board.host], opts_for(board))
    assert not res.ok and res.step == "smoke test" and "spoken question" in res.message, res
    assert board.current() == "m-a" and board.running() == "m-a"
    assert not (board.root / "bundles" / m.name).exists()
