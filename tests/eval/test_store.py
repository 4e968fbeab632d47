"""The result store (kvprism.eval.store), atomic writes (kvprism.atomic) and signal handling (kvprism.runtime)."""

import errno
import json
import os
import signal
import stat

import pytest

from kvprism.atomic import AtomicBatch, atomic_write
from kvprism.errors import KvprismError
from kvprism.eval import store as S
from kvprism.runtime import Interrupted, deferred_signals, interrupts_as_exceptions, physical_cores, set_threads


def _row(i, **kw):
    base = dict(key=f"k{i}", mode="niah", config="dense", backend="dense", context=100, depth=0.5)
    base.update(prefill_id=f"p{i}", prefill_s=1.0, decode_s=0.5, decode_steps=2)
    base.update(kw)
    return base


# ---------------------------------------------------------------------------------------------------- atomic files
@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_write_respects_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        p = atomic_write(tmp_path / "a.txt", "hello")
        with AtomicBatch() as batch:
            batch.write(tmp_path / "b.png", lambda path: path.write_bytes(b"x"))
    finally:
        os.umask(old)
    assert p.read_text() == "hello"
    assert stat.S_IMODE(p.stat().st_mode) == mode
    assert stat.S_IMODE((tmp_path / "b.png").stat().st_mode) == mode


def test_atomic_write_keeps_existing_permissions_and_leaves_no_temp(tmp_path):
    p = tmp_path / "x.json"
    p.write_text("old")
    p.chmod(0o640)
    atomic_write(p, b"new")
    assert p.read_text() == "new" and stat.S_IMODE(p.stat().st_mode) == 0o640

    def boom(path):
        path.write_text("partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        atomic_write(p, boom)
    assert p.read_text() == "new" and sorted(x.name for x in tmp_path.iterdir()) == ["x.json"]


def test_atomic_batch_all_or_nothing(tmp_path):
    (tmp_path / "a").write_text("A0")
    (tmp_path / "b").write_text("B0")
    with pytest.raises(OSError), AtomicBatch() as batch:
        batch.write(tmp_path / "a", "A1")
        batch.write(tmp_path / "b", lambda p: (_ for _ in ()).throw(OSError(errno.ENOSPC, "disk full")))
    assert (tmp_path / "a").read_text() == "A0" and (tmp_path / "b").read_text() == "B0"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["a", "b"]


# ---------------------------------------------------------------------------------------------------------- reading
def test_corrupt_middle_line_is_an_error_naming_file_and_line(tmp_path):
    p = tmp_path / S.RESULTS_FILE
    lines = [json.dumps(_row(i)) for i in range(8)]
    lines[2] = '{"key": "k2", "mode": "ni'  # a torn line in the middle (e.g. two writers or a crash + manual edit)
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(S.CorruptStoreError, match=r"results\.jsonl line 3 is corrupt"):
        S.read_cells(p)
    got = S.read_cells(p, skip_corrupt=True)
    assert len(got.rows) == 7 and [line for line, _ in got.skipped] == [3]


def test_torn_last_line_is_ignored_not_an_error(tmp_path):
    p = tmp_path / S.RESULTS_FILE
    p.write_text(json.dumps(_row(0)) + "\n" + json.dumps(_row(1))[:-5])
    got = S.read_cells(p)
    assert [r["key"] for r in got.rows] == ["k0"] and got.torn_tail
    assert S.repair_results(p) and p.read_text() == json.dumps(_row(0)) + "\n"


def test_wrong_shape_row_names_file_line_and_field(tmp_path):
    p = tmp_path / S.RESULTS_FILE
    rows = [_row(0), _row(1, context="150"), _row(2), [1, 2]]
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(S.CorruptStoreError, match=r"line 2: field 'context' = '150' has type str; expected int"):
        S.read_cells(p, required=S.REQUIRED_FIELDS)
    bad = _row(0)
    del bad["decode_s"]
    p.write_text(json.dumps(bad) + "\n")
    with pytest.raises(S.CorruptStoreError, match="line 1: field 'decode_s' is missing"):
        S.read_cells(p, required=S.REQUIRED_FIELDS)


def test_dedupe_keeps_first():
    rows, dropped = S.dedupe([_row(0, x=1), _row(1), _row(0, x=2)])
    assert dropped == 1 and [r["key"] for r in rows] == ["k0", "k1"] and rows[0]["x"] == 1


# ---------------------------------------------------------------------------------------------------------- locking
def test_second_writer_fails_at_once_naming_the_holder(tmp_path):
    a = S.ResultStore(tmp_path)
    b = S.ResultStore(tmp_path)
    with a.lock():
        with pytest.raises(S.StoreLockedError, match=f"being written by process {os.getpid()}"), b.lock():
            pass
        a.append(_row(0))
    with b.lock():  # released on exit
        b.append(_row(1))
    assert [r["key"] for r in S.read_results(tmp_path / S.RESULTS_FILE)] == ["k0", "k1"]
    with pytest.raises(KvprismError, match="without holding the store lock"):
        b.append(_row(2))


def test_settings_mismatch_lists_the_differing_fields(tmp_path):
    st = S.ResultStore(tmp_path)
    old = {"selection": {"block_size": 64, "k": 8}, "decode": {"chat": True}}
    new = {"selection": {"block_size": 32, "k": 8}, "decode": {"chat": False}}
    with st.lock():
        st.check_settings({"niah/exact-k8": old})
        st.record_invocation(["kvprism", "niah"], {"niah/exact-k8": old}, model="tiny")
        st.check_settings({"niah/exact-k8": old, "niah/exact-k4": new})  # same settings / a new config: fine
        with pytest.raises(
            S.SettingsMismatchError, match=r"decode\.chat true -> false; selection\.block_size 64 -> 32"
        ):
            st.check_settings({"niah/exact-k8": new})
    meta = json.loads((tmp_path / S.RUN_FILE).read_text())
    inv = meta["invocations"][0]
    assert inv["argv"] == ["kvprism", "niah"] and {"kvprism", "torch", "transformers", "python"} <= set(inv["versions"])
    assert meta["settings"]["niah/exact-k8"]["settings"] == old


def test_legacy_rows_without_settings_are_not_reused(tmp_path):
    S.append_result(tmp_path / S.RESULTS_FILE, _row(0, config="exact-k8"))
    st = S.ResultStore(tmp_path)
    with pytest.raises(S.SettingsMismatchError, match="without a record of their settings"):
        st.check_settings({"niah/exact-k8": {"x": 1}})


def test_stable_hash_is_exact_for_floats_and_ignores_dict_order():
    assert S.stable_hash({"a": 1, "b": 0.3}) == S.stable_hash({"b": 0.3, "a": 1})
    assert S.stable_hash({"d": 0.3}) != S.stable_hash({"d": 0.30001})
    assert S.stable_hash({"d": 1}) != S.stable_hash({"d": 1.0}) != S.stable_hash({"d": True})

    class P:
        task, context, seed = "t", 10, 0

    p1, p2 = P(), P()
    p1.depth, p2.depth = 0.3, 0.30001
    assert S.cell_key(p1, "noise", "numbers", "dense", "niah", "h") != S.cell_key(
        p2, "noise", "numbers", "dense", "niah", "h"
    )


# ---------------------------------------------------------------------------------------------------------- signals
def test_deferred_signals_deliver_after_the_block():
    reached = []
    before = signal.signal(signal.SIGINT, signal.default_int_handler)  # whatever an earlier test left installed
    try:
        with pytest.raises(KeyboardInterrupt):
            with deferred_signals():
                signal.raise_signal(signal.SIGINT)  # to this (the main) thread, not to any thread of the process
                for _ in range(1000):  # the handler runs at the next bytecode boundary
                    pass
                reached.append("end of block")  # not cut off by the signal
            reached.append("after")  # pragma: no cover - the signal is delivered before this
    finally:
        signal.signal(signal.SIGINT, before)
    assert reached == ["end of block"]


def test_interrupts_as_exceptions_maps_sigterm():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Interrupted) as info, interrupts_as_exceptions():
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(1000):  # the handler runs at the next bytecode boundary
            pass
    assert info.value.exit_code == 143
    assert signal.getsignal(signal.SIGTERM) == before  # the previous handler is back


def test_threads(monkeypatch):
    import torch

    before = torch.get_num_threads()
    try:
        assert physical_cores() >= 1
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        assert set_threads() == 1  # the environment's choice is the default
        monkeypatch.delenv("OMP_NUM_THREADS")
        assert set_threads() == physical_cores()
        assert set_threads(1) == 1 and torch.get_num_threads() == 1
        with pytest.raises(KvprismError, match="threads = 0 is invalid"):
            set_threads(0)
    finally:
        torch.set_num_threads(before)


def test_cells_stored_with_the_older_method_field_still_load(tmp_path):
    from kvprism.eval.store import REQUIRED_FIELDS, read_cells

    path = tmp_path / "results.jsonl"
    old = dict(key="a", mode="niah", config="exact-k4", backend="exact", context=100, depth=0.5, prefill_id="p")
    old.update(prefill_s=1.0, decode_s=1.0, decode_steps=2)
    new = {**{k: v for k, v in old.items() if k != "backend"}, "key": "b", "method": "photonic"}
    path.write_text(json.dumps(old) + "\n" + json.dumps(new) + "\n")
    rows = read_cells(path, required=REQUIRED_FIELDS).rows
    assert [r["method"] for r in rows] == ["exact", "photonic"] and all("backend" not in r for r in rows)
