"""Every fault a grid site throws, run for real: replaced inputs, NaN, full disks, signals, damaged
files, two jobs in one directory, crafted archives and configs.  Each test asserts the exit code,
the message, what is left on disk and, for reruns, that the result is an uninterrupted run's.
docs/reliability.md lists the cases and what the product does; these tests keep it true."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import awkward as ak
import h5py
import hdf5plugin  # noqa: F401 - work files are Blosc-compressed
import numpy as np
import pytest
import uproot
import yaml
from conftest import REPO, run_payload
from helpers import quick_job_config

DATA = REPO / "payload" / "resources"
SAMPLE_A, SAMPLE_B = DATA / "sample_A.root", DATA / "sample_B.root"


def _leftovers(directory: Path) -> list[Path]:
    return [p for p in directory.rglob(".*") if p.name.startswith((".tmp-", ".old-"))]


def _config(tmp_path: Path, **sections) -> Path:
    path = quick_job_config(tmp_path / "job.yaml")
    raw = yaml.safe_load(path.read_text())
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    path.write_text(yaml.safe_dump(raw))
    return path


def _run(tmp_path: Path, primary: Path, secondary: Path, out: Path, config: Path, *extra: str):
    return run_payload(
        "run",
        "-q",
        "--primary",
        str(primary),
        "--secondary",
        str(secondary),
        "--config",
        str(config),
        "--output",
        str(out),
        *extra,
        cwd=tmp_path,
    )


def _one_error_line(proc) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("payload: error:")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def _rewrite(source: Path, target: Path, change) -> Path:
    """A copy of a ROOT file with ``change(arrays)`` applied to its branches."""
    with uproot.open(source) as f:
        arrays = f["nominal"].arrays()
    columns = {name: arrays[name] for name in arrays.fields}
    change(columns)
    with uproot.recreate(target) as f:
        f["nominal"] = columns
    return target


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """One small trained job, copied by the tests that damage it."""
    where = tmp_path_factory.mktemp("trained")
    out = where / "job"
    assert _run(where, SAMPLE_A, SAMPLE_B, out, _config(where)).returncode == 0
    return out


@pytest.fixture(scope="module")
def resumable(tmp_path_factory) -> tuple[Path, Path]:
    """(config, output) of an uninterrupted 4-epoch job: what interrupted and resumed runs must equal."""
    where = tmp_path_factory.mktemp("resumable")
    config = _config(where, training={"epochs": 4, "early_stopping_patience": 0})
    out = where / "job"
    assert _run(where, SAMPLE_A, SAMPLE_B, out, config).returncode == 0
    return config, out


# Silent wrong results ------------------------------------------------------------------------------


@pytest.mark.slow
def test_an_input_replaced_under_the_same_name_is_converted_and_trained_again(tmp_path):
    config = _config(tmp_path)
    primary = tmp_path / "primary.root"
    shutil.copyfile(SAMPLE_A, primary)
    out = tmp_path / "out"
    assert _run(tmp_path, primary, SAMPLE_B, out, config).returncode == 0
    first = json.loads((out / "metrics.json").read_text())
    # The same name, other events (the toy B sample): nothing of the first run may be reused.
    shutil.copyfile(SAMPLE_B, primary)
    proc = _run(tmp_path, primary, SAMPLE_B, out, config)
    assert proc.returncode == 0, proc.stderr
    log = (out / "job.log").read_text()
    assert "converting" in log and "input primary.root changed" in log
    assert "discarding the checkpoints" in log
    manifest = json.loads((out / "manifest.json").read_text())
    second = json.loads((out / "metrics.json").read_text())
    with uproot.open(SAMPLE_B) as f:
        assert manifest["inputs"]["primary"][0]["bytes"] == primary.stat().st_size
    # Both samples are now B: the classifier can tell nothing apart, unlike the first run.
    assert first["test"]["auc"] > 0.55 and abs(second["test"]["auc"] - 0.5) < 0.03
    with h5py.File(out / "work" / "primary.h5") as f:
        assert json.loads(f.attrs["provenance"])["sources"][0]["entries"] == f["entry"].shape[0]


def _nan_jet_pt(fraction: float):
    def change(columns):
        pt = columns["jet_pt"]
        counts = ak.num(pt)
        flat = ak.to_numpy(ak.flatten(pt)).copy()
        rng = np.random.default_rng(1)
        flat[rng.random(len(flat)) < fraction] = np.nan
        columns["jet_pt"] = ak.unflatten(flat, counts)

    return change


@pytest.mark.slow
def test_nan_inputs_stop_the_job_naming_the_branch_unless_a_policy_accepts_them(tmp_path):
    bad = _rewrite(SAMPLE_A, tmp_path / "nan.root", _nan_jet_pt(0.02))
    with uproot.open(bad) as f:
        nans = int(np.isnan(ak.to_numpy(ak.flatten(f["nominal"]["jet_pt"].array()))).sum())
    proc = _run(tmp_path, bad, SAMPLE_B, tmp_path / "out", _config(tmp_path))
    assert proc.returncode == 7
    line = _one_error_line(proc)
    assert "'jet_pt'" in line and "NaN" in line and "data.nonfinite" in line
    error = json.loads((tmp_path / "out" / "error.json").read_text())
    assert error["stage"] == "convert_primary" and error["exit_code"] == 7
    for policy in ("drop_event", "zero"):
        out = tmp_path / policy
        proc = _run(tmp_path, bad, SAMPLE_B, out, _config(tmp_path, data={"nonfinite": policy}))
        assert proc.returncode == 0, proc.stderr
        manifest = json.loads((out / "manifest.json").read_text())
        quality = manifest["data_quality"]["primary"]["nonfinite"]
        assert quality == {"mode": policy, "values": {"jet_pt": nans}}
        metrics = json.loads((out / "metrics.json").read_text())
        assert any("NaN" in w for w in metrics["warnings"])
        scores = h5py.File(out / "predictions.h5")["score"][:]
        assert np.isfinite(scores).all() and scores.std() > 0  # not a dead network
        with h5py.File(out / "work" / "primary.h5") as f:
            events = f["entry"].shape[0]
            assert np.isfinite(f["objects"][:]).all()
        with uproot.open(bad) as f:
            entries = f["nominal"].num_entries
        assert events < entries if policy == "drop_event" else events == entries


@pytest.mark.slow
def test_training_that_diverges_stops_with_a_clear_error(tmp_path):
    config = _config(
        tmp_path,
        training={"learning_rate": 1e12, "epochs": 2, "schedule": "constant"},
        scaling={"method": "none", "transforms": {}},
    )
    out = tmp_path / "out"
    proc = _run(tmp_path, SAMPLE_A, SAMPLE_B, out, config)
    assert proc.returncode == 12, proc.stderr
    assert "the loss became" in _one_error_line(proc)
    assert json.loads((out / "error.json").read_text())["stage"] == "train"
    assert not (out / "manifest.json").exists() and not (out / "model.keras").exists()


@pytest.mark.slow
def test_negative_energies_are_warned_and_one_file_in_both_samples_is_refused(tmp_path):
    def negative(columns):
        columns["met"] = columns["met"] - 50.0  # a few hundred events below zero

    bad = _rewrite(SAMPLE_A, tmp_path / "neg.root", negative)
    out = tmp_path / "out"
    assert _run(tmp_path, bad, SAMPLE_B, out, _config(tmp_path)).returncode == 0
    below = json.loads((out / "manifest.json").read_text())["data_quality"]["primary"]["negative_energies"]
    with uproot.open(bad) as f:
        assert below == {"pt": int((f["nominal"]["met"].array(library="np") < 0).sum())} and below["pt"] > 0
    assert "negative values of energy features" in (out / "job.log").read_text()
    copy = tmp_path / "elsewhere" / SAMPLE_A.name
    copy.parent.mkdir()
    shutil.copyfile(SAMPLE_A, copy)
    proc = _run(tmp_path, SAMPLE_A, copy, tmp_path / "same", _config(tmp_path))
    assert proc.returncode == 2 and "share 1 file(s)" in _one_error_line(proc)


@pytest.mark.slow
def test_a_failed_tarball_step_leaves_no_manifest(tmp_path):
    tarball = tmp_path / "out.tgz"
    tarball.mkdir()  # a directory where the tarball should go: the rename fails
    (tarball / "keep").write_text("x")
    out = tmp_path / "out"
    proc = _run(tmp_path, SAMPLE_A, SAMPLE_B, out, _config(tmp_path), "--tarball", str(tarball))
    assert proc.returncode == 9
    assert f"{tarball}: cannot be put in place" in _one_error_line(proc)
    error = json.loads((out / "error.json").read_text())
    assert error["stage"] == "tarball"
    assert not (out / "manifest.json").exists() and not (out / "metrics.json").exists()
    report = json.loads((tmp_path / "userJobMetadata.json").read_text())
    assert report["status"] == "failed" and report["exit_code"] == error["exit_code"]
    assert not _leftovers(tmp_path)


# Faults that must end cleanly ---------------------------------------------------------------------

needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("mount"), reason="mounting a small file system needs root (CI runs as root)"
)


@contextlib.contextmanager
def _tmpfs(path: Path, size: str, *options: str):
    path.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", ",".join([f"size={size}", *options]), "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if result.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({result.stderr.strip()})")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.mark.slow
@needs_root
@pytest.mark.parametrize(("size", "stage"), [("300k", "convert_primary"), (None, "evaluate")])
def test_a_full_disk_is_exit_9_with_nothing_half_written(tmp_path, trained, size, stage):
    """A disk that fills during conversion, or while predictions.h5 is written (sized from the same
    job run before: room for the work files and the model, not the predictions)."""
    config = _config(tmp_path)
    if size is None:
        reference = trained
        used = sum(p.stat().st_size for p in (reference / "work").glob("*")) + sum(
            (reference / name).stat().st_size for name in ("model.keras", "scaler.json", "history.csv")
        )
        room = used + (reference / "predictions.h5").stat().st_size // 2
        size = f"{room // 1024 + 200}k"
    with _tmpfs(tmp_path / "disk", size) as disk:
        out = disk / "out"
        proc = _run(tmp_path, SAMPLE_A, SAMPLE_B, out, config)
        assert proc.returncode == 9, proc.stderr
        assert "no space left on device" in _one_error_line(proc)
        assert not _leftovers(disk)
        assert not (out / "manifest.json").exists() and not (out / "metrics.json").exists()
        if (out / "error.json").exists():  # where space allowed
            error = json.loads((out / "error.json").read_text())
            assert error["exit_code"] == 9 and error["stage"] == stage
        report = json.loads((tmp_path / "userJobMetadata.json").read_text())
        assert report["exit_code"] == 9


def _start(tmp_path: Path, out: Path, config: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "payload",
            "-q",
            "run",
            "--primary",
            str(SAMPLE_A),
            "--secondary",
            str(SAMPLE_B),
            "--config",
            str(config),
            "--output",
            str(out),
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(predicate, proc: subprocess.Popen, seconds: float = 300) -> None:
    deadline = time.time() + seconds
    while not predicate():
        if proc.poll() is not None:
            pytest.fail(f"the job ended before the fault could be injected: {proc.communicate()[1][-2000:]}")
        if time.time() > deadline:
            proc.kill()
            pytest.fail("the job never reached the stage to interrupt")
        time.sleep(0.05)


def _epochs_done(out: Path) -> int:
    with contextlib.suppress(OSError, ValueError, KeyError):
        return json.loads((out / "checkpoints" / "state.json").read_text())["epoch"] + 1
    return 0


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1, signal.SIGINT])
def test_a_signal_during_training_ends_cleanly_and_a_rerun_resumes_to_the_same_result(tmp_path, resumable, signum):
    config, reference = resumable
    out = tmp_path / "out"
    proc = _start(tmp_path, out, config)
    _wait_for(lambda: _epochs_done(out) >= 1, proc)
    sent = time.time()
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=60)
    assert time.time() - sent < 20
    assert proc.returncode == 128 + signum, stderr
    assert f"terminated by signal {int(signum)}" in stderr and "Traceback" not in stderr
    error = json.loads((out / "error.json").read_text())
    assert error["stage"] == "train" and error["exit_code"] == 128 + signum
    report = json.loads((tmp_path / "userJobMetadata.json").read_text())
    assert report["status"] == "failed" and report["exit_code"] == 128 + signum
    assert not _leftovers(out) and not (out / "manifest.json").exists()
    done = _epochs_done(out)
    assert 1 <= done < 4
    if signum != signal.SIGTERM:
        return  # the resume itself is the same for every signal
    rerun = _run(tmp_path, SAMPLE_A, SAMPLE_B, out, config)
    assert rerun.returncode == 0, rerun.stderr
    assert f"resuming after epoch {done}" in (out / "job.log").read_text()
    assert not (out / "error.json").exists()
    # The resumed job ends where the uninterrupted one does.
    ref, got = (np.genfromtxt(d / "history.csv", delimiter=",", names=True) for d in (reference, out))
    for column in ("loss", "val_loss"):  # the same training batches and the same validation events
        np.testing.assert_allclose(got[column], ref[column], rtol=1e-4)
    with h5py.File(reference / "predictions.h5") as a, h5py.File(out / "predictions.h5") as b:
        np.testing.assert_allclose(b["score"][:], a["score"][:], atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("stage", "temporary"), [("convert_primary", "work/.tmp-*-primary.h5"), ("evaluate", ".tmp-*-predictions.h5")]
)
def test_a_signal_while_a_file_is_written_leaves_nothing_half_written(tmp_path, stage, temporary):
    """SIGTERM while the work file, or predictions.h5, is being written (twelve copies of the
    sample make both take seconds)."""
    big = tmp_path / "many"
    big.mkdir()
    for i in range(12):
        (big / f"a{i:02d}.root").symlink_to(SAMPLE_A)
    config = _config(tmp_path, data={"chunk_size": 500})
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "payload",
            "-q",
            "run",
            "--primary",
            str(big),
            "--secondary",
            str(SAMPLE_B),
            "--config",
            str(config),
            "--output",
            str(out),
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for(lambda: any(out.glob(temporary)), proc)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, stderr
    assert json.loads((out / "error.json").read_text())["stage"] == stage
    assert not _leftovers(out) and not (out / "manifest.json").exists()
    written = out / ("work/primary.h5" if stage == "convert_primary" else "predictions.h5")
    assert not written.exists()


def test_an_input_without_a_checksum_is_never_reused(tmp_path):
    """An http URL, or an XRootD server that reports no checksum, gives an input identity without
    adler32: its work file is converted again and checkpoints made from it are discarded, since a
    replacement under the same name could not be seen."""
    from payload.config import load_config
    from payload.results.manifest import describe_input
    from payload.resume import bind_checkpoints, identity, work_file

    config = load_config(_config(tmp_path))
    target = tmp_path / "work" / "primary.h5"
    target.parent.mkdir()
    checked = [identity(describe_input(str(SAMPLE_A)))]
    unchecked = [{k: v for k, v in checked[0].items() if k != "adler32"}]

    def converted(inputs) -> int:
        work_file(config, [str(SAMPLE_A)], inputs, target, progress=False)
        return target.stat().st_ino  # a conversion renames a new file into place

    first = converted(checked)
    assert converted(checked) == first  # verified: reused
    assert converted(unchecked) != first
    assert converted(unchecked) != converted(unchecked)  # never reused
    bind_checkpoints(tmp_path, config, {"primary": checked})
    (tmp_path / "checkpoints" / "state.json").write_text("{}")
    bind_checkpoints(tmp_path, config, {"primary": checked})
    assert (tmp_path / "checkpoints" / "state.json").exists()
    bind_checkpoints(tmp_path, config, {"primary": unchecked})
    assert not (tmp_path / "checkpoints" / "state.json").exists()


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.mark.slow
def test_a_damaged_checkpoint_or_work_file_is_redone_not_a_blocked_rerun(tmp_path, resumable):
    config, reference = resumable
    out = tmp_path / "out"
    proc = _start(tmp_path, out, config)
    _wait_for(lambda: _epochs_done(out) >= 2, proc)
    proc.kill()
    proc.communicate()
    state = json.loads((out / "checkpoints" / "state.json").read_text())
    last = out / "checkpoints" / state["checkpoint"]
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # a truncated zip
    work = out / "work" / "secondary.h5"
    damaged = bytearray(work.read_bytes())
    middle = len(damaged) // 2
    damaged[middle : middle + 4096] = bytes(4096)  # a zeroed block inside the compressed events
    work.write_bytes(bytes(damaged))
    inputs = out / "work" / "primary.inputs.h5"
    damaged = bytearray(inputs.read_bytes())
    middle = len(damaged) // 2
    damaged[middle : middle + 4096] = bytes(4096)
    inputs.write_bytes(bytes(damaged))
    proc = _run(tmp_path, SAMPLE_A, SAMPLE_B, out, config)
    assert proc.returncode == 0, proc.stderr
    log = (out / "job.log").read_text()
    assert f"{state['checkpoint']} cannot be loaded" in log
    assert ("resuming from the best epoch" in log) or ("training from the start" in log)
    assert "converting" in log and "secondary.h5 again" in log
    assert "writing primary.inputs.h5 again: it is damaged" in log
    assert "writing secondary.inputs.h5 again: it was computed from other inputs" in log  # reconverted
    epochs = [int(line.split(",")[0]) for line in (out / "history.csv").read_text().splitlines()[1:]]
    assert epochs == [0, 1, 2, 3]
    with h5py.File(reference / "work" / "secondary.h5") as a, h5py.File(work) as b:
        np.testing.assert_array_equal(a["objects"][:], b["objects"][:])


@pytest.mark.slow
def test_a_second_job_into_a_busy_directory_stops_at_once_and_dead_runs_temporaries_go(tmp_path):
    config = _config(tmp_path, training={"epochs": 3, "early_stopping_patience": 0})
    out = tmp_path / "out"
    first = _start(tmp_path, out, config)
    _wait_for(lambda: (out / "work").exists(), first)
    started = time.time()
    second = _run(tmp_path, SAMPLE_A, SAMPLE_B, out, config)
    assert second.returncode == 11
    assert f"another payload job (pid {first.pid})" in _one_error_line(second)
    assert time.time() - started < 30  # refused before any work, not after a training
    _, stderr = first.communicate(timeout=600)
    assert first.returncode == 0, stderr
    epochs = [int(line.split(",")[0]) for line in (out / "history.csv").read_text().splitlines()[1:]]
    assert epochs == [0, 1, 2]  # one writer
    # Temporaries of a run that died: removed by the next run; those of a live process are kept.
    dead, alive = _dead_pid(), os.getpid()
    stale = [out / f".tmp-{dead}-metrics.json", out / "work" / f".tmp-{dead}-primary.h5", out / f".old-{dead}-plots"]
    for path in stale[:2]:
        path.write_text("half written")
    stale[2].mkdir()
    live = out / f".tmp-{alive}-other.json"
    live.write_text("in use")
    assert _run(tmp_path, SAMPLE_A, SAMPLE_B, out, config).returncode == 0
    assert not any(p.exists() for p in stale) and live.exists()
    assert "removed 3 temporary file(s) left by killed runs" in (out / "job.log").read_text()


@pytest.mark.slow
@needs_root
def test_an_unwritable_output_parent_or_working_directory_is_refused_before_any_work(tmp_path):
    config = _config(tmp_path)
    with _tmpfs(tmp_path / "ro", "1m", "ro") as readonly:
        proc = _run(tmp_path, SAMPLE_A, SAMPLE_B, readonly / "out", config)
        assert proc.returncode == 9
        assert str(readonly) in _one_error_line(proc)
        started = time.time()
        proc = _run(readonly, SAMPLE_A, SAMPLE_B, tmp_path / "out", config)  # the job report goes to the cwd
        assert proc.returncode == 9 and "working directory" in _one_error_line(proc)
        assert time.time() - started < 30 and not (tmp_path / "out").exists()


# Untrusted archives and configs --------------------------------------------------------------------


def _evaluate(tmp_path: Path, model: Path, out: Path):
    return run_payload(
        "run",
        "-q",
        "--mode",
        "evaluate",
        "--model",
        str(model),
        "--primary",
        str(SAMPLE_A),
        "--secondary",
        str(SAMPLE_B),
        "--output",
        str(out),
        cwd=tmp_path,
    )


def _bundle_copy(trained: Path, target: Path) -> Path:
    target.mkdir(parents=True)
    for name in ("model.keras", "scaler.json", "config.yaml", "metrics.json", "manifest.json"):
        shutil.copyfile(trained / name, target / name)
    return target


def test_a_gzip_bomb_as_model_is_refused_before_it_is_written(tmp_path):
    import io
    import tarfile

    from payload.results.bundle import MAX_BYTES

    class Zeros(io.RawIOBase):
        def __init__(self, n):
            self.n = n

        def readable(self):
            return True

        def readinto(self, buffer):
            k = min(len(buffer), self.n)
            buffer[:k] = bytes(k)
            self.n -= k
            return k

    bomb = tmp_path / "model.tgz"
    with tarfile.open(bomb, "w:gz", compresslevel=1) as tar:
        info = tarfile.TarInfo("model.keras")
        info.size = MAX_BYTES + (1 << 20)
        tar.addfile(info, io.BufferedReader(Zeros(info.size), 1 << 20))
    assert bomb.stat().st_size < MAX_BYTES // 100
    out = tmp_path / "out"
    proc = _evaluate(tmp_path, bomb, out)
    assert proc.returncode == 4
    line = _one_error_line(proc)
    assert str(bomb) in line and "'model.keras'" in line and f"past {MAX_BYTES} bytes" in line, line
    written = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) if out.exists() else 0
    assert written < 1 << 20


@pytest.mark.slow
@pytest.mark.parametrize(
    ("selection", "words"),
    [
        ("met > 9**9**9**9", ["power", "at most 16"]),
        ("(" * 200 + "met" + ")" * 200 + " > 1", ["limit"]),
        ("met > " + "+".join(["1"] * 400), ["syntax nodes", "limit"]),
        ("met > 1e400", ["limit"]),
    ],
)
def test_a_bundle_with_a_crafted_selection_is_refused_at_once(tmp_path, trained, selection, words):
    bundle = _bundle_copy(trained, tmp_path / "bundle")
    raw = yaml.safe_load((bundle / "config.yaml").read_text())
    raw["data"]["selection"] = selection
    (bundle / "config.yaml").write_text(yaml.safe_dump(raw))
    started = time.time()
    proc = _evaluate(tmp_path, bundle, tmp_path / "out")
    assert proc.returncode == 4, proc.stderr
    line = _one_error_line(proc)
    assert "config.yaml" in line and all(w in line for w in words), line
    assert time.time() - started < 60


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (
            lambda d: _write(
                d / "alias.yaml",
                "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
                + "".join(
                    f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
                    f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n"
                    for i in range(8)
                ),
            ),
            ["aliases", "refused"],
        ),
        (lambda d: _write(d / "big.yaml", "# padding\n" * (1 << 20)), ["bytes", "limit"]),
        (lambda d: _write(d / "deep.yaml", "a: " + "[" * 20000 + "]" * 20000 + "\n"), ["nested", "levels"]),
    ],
)
def test_a_crafted_config_is_refused_with_the_limit_named(tmp_path, make, words):
    config = make(tmp_path)
    started = time.time()
    proc = _run(tmp_path, SAMPLE_A, SAMPLE_B, tmp_path / "out", config)
    assert proc.returncode == 2, proc.stderr
    line = _one_error_line(proc)
    assert config.name in line and all(w in line for w in words), line
    assert time.time() - started < 30


def _unsafe_model(path: Path) -> None:
    import keras

    inputs = keras.Input((3,))
    keras.Model(inputs, keras.layers.Lambda(lambda x: x * 2)(inputs)).save(path)


def _zero_scale(bundle: Path) -> None:
    scaler = json.loads((bundle / "scaler.json").read_text())
    scaler["objects"]["scale"][0] = 0.0
    (bundle / "scaler.json").write_text(json.dumps(scaler))


def _short_scaler(bundle: Path) -> None:
    scaler = json.loads((bundle / "scaler.json").read_text())
    for key in ("offset", "scale"):
        scaler["objects"][key] = scaler["objects"][key][:-1]
    (bundle / "scaler.json").write_text(json.dumps(scaler))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("damage", "words"),
    [
        (lambda b: _unsafe_model(b / "model.keras"), ["model.keras", "safe mode"]),
        (_zero_scale, ["scaler.json", "scale"]),
        (_short_scaler, ["scaler.json"]),
    ],
)
def test_a_bad_bundle_is_exit_4_naming_the_file_and_merge_leaves_it_out(tmp_path, trained, damage, words):
    bad = _bundle_copy(trained, tmp_path / "bad")
    damage(bad)
    proc = _evaluate(tmp_path, bad, tmp_path / "out")
    assert proc.returncode == 4, proc.stderr
    line = _one_error_line(proc)
    assert all(w in line for w in words), line
    if damage is not _zero_scale:
        return  # merge's handling is the same for every damage
    # An ensemble of the good job and the bad one: the bad one is left out with that reason.
    good = _bundle_copy(trained, tmp_path / "good")
    merged = tmp_path / "merged"
    proc = run_payload("merge", "-q", str(good), str(bad), "--ensemble", "--output", str(merged), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((merged / "summary.json").read_text())
    left_out = summary["ensemble"]["left_out"] + summary["skipped"]
    assert any(entry.get("job", entry.get("name")) == "bad" for entry in left_out)
    assert summary["ensemble"]["members"] == ["good"]
    assert _evaluate(tmp_path, merged / "ensemble", tmp_path / "applied").returncode == 0


@pytest.mark.slow
def test_merge_of_an_oddly_named_tarball_stays_in_its_own_directory(tmp_path, trained):
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    for name in ("a.tgz", "...tgz"):
        subprocess.run(
            [
                "tar",
                "-czf",
                str(jobs / name),
                "-C",
                str(trained),
                "model.keras",
                "scaler.json",
                "config.yaml",
                "metrics.json",
                "manifest.json",
                "predictions.h5",
            ],
            check=True,
        )
    merged = tmp_path / "merged"
    proc = run_payload("merge", "-q", str(jobs / "a.tgz"), str(jobs / "...tgz"), "--output", str(merged), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((merged / "summary.json").read_text())
    assert sorted(summary["merged"]) == ["a", "job"], summary
    assert sorted(p.name for p in jobs.iterdir()) == ["...tgz", "a.tgz"]
    assert not list(merged.glob("model.keras")) and not list(tmp_path.glob("model.keras"))


# Submission ---------------------------------------------------------------------------------------


def test_condor_names_with_macros_spaces_and_newlines(tmp_path):
    htcondor2 = pytest.importorskip("htcondor2", reason="pip install htcondor (in the test extra)")
    from test_submit import condor_split

    inputs = tmp_path / "in"
    inputs.mkdir()
    primary = inputs / "$(name) $ENV(HOME).root"
    primary.write_bytes(b"")
    secondary = inputs / "b.root"
    secondary.write_bytes(b"")
    config = tmp_path / "my job $(Cluster).yaml"
    config.write_text((DATA / "demo.yaml").read_text())
    out = tmp_path / "condor"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "submit.cli",
            "condor",
            "--config",
            str(config),
            "--image",
            "docker.io/jdoe/gp:1",
            "--primary",
            str(primary),
            "--secondary",
            str(secondary),
            "--directory",
            str(out),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    sub = htcondor2.Submit((out / "train.sub").read_text())
    items = list(sub.itemdata()) or [{}]
    job = htcondor2.Submit(dict(sub))
    for key, value in items[0].items():
        job[key] = value
    transfer = [f.strip() for f in job.expand("transfer_input_files").split(",")]
    assert str(primary) in transfer  # not expanded by HTCondor
    args = condor_split(job.expand("arguments"))
    assert args[args.index("--primary") + 1] == primary.name
    config_name = args[args.index("--config") + 1]
    assert (out / config_name).is_file() and " " not in config_name and "$" not in config_name
    # A newline cannot be quoted for HTCondor: refused with one line, nothing written.
    newline = inputs / "a\nqueue 1000.root"
    newline.write_bytes(b"")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "submit.cli",
            "condor",
            "--config",
            str(config),
            "--image",
            "docker.io/jdoe/gp:1",
            "--primary",
            str(newline),
            "--secondary",
            str(secondary),
            "--directory",
            str(tmp_path / "refused"),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=300,
    )
    assert proc.returncode == 2 and "newline" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "refused" / "train.sub").exists()


def test_local_docker_mounts_survive_colons_and_commas(tmp_path):
    import csv

    from submit.local import LocalRun

    odd = tmp_path / 'run:1,a"b'
    odd.mkdir()
    config = odd / "job.yaml"
    config.write_text("x")
    argv = LocalRun([str(odd / "a.root")], [str(odd / "b.root")], image="img").argv(config, odd / "p000")
    assert "-v" not in argv
    mounts = [argv[i + 1] for i, a in enumerate(argv) if a == "--mount"]
    parsed = [dict(f.split("=", 1) if "=" in f else (f, True) for f in next(csv.reader([m]))) for m in mounts]
    assert {"type": "bind", "source": str(odd), "target": str(odd), "readonly": True} in parsed
    assert any(p["source"] == str((odd / "p000").resolve()) and p["target"] == "/job" for p in parsed)


# A lost GPU ----------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("how", ["flag", "environment"])
def test_a_gpu_job_without_a_gpu_fails_at_once_and_reports_its_device(tmp_path, how):
    """CUDA_VISIBLE_DEVICES="" hides every GPU from every backend: what a node whose GPU is gone
    looks like, on any machine.  The job must not train on the CPU and exit 0."""
    hidden = {"CUDA_VISIBLE_DEVICES": ""}
    config, out = _config(tmp_path), tmp_path / "out"
    args = [
        "run",
        "-q",
        "--primary",
        str(SAMPLE_A),
        "--secondary",
        str(SAMPLE_B),
        "--config",
        str(config),
        "--output",
        str(out),
    ]
    if how == "flag":
        proc = run_payload(*args, "--require-gpu", cwd=tmp_path, env=hidden)
    else:
        proc = run_payload(*args, cwd=tmp_path, env={**hidden, "PAYLOAD_REQUIRE_GPU": "1"})
    assert proc.returncode == 13, proc.stderr
    line = _one_error_line(proc)
    assert "sees no usable GPU" in line and "CUDA_VISIBLE_DEVICES=''" in line
    assert json.loads((out / "error.json").read_text())["stage"] == "device"
    assert not (out / "work" / "primary.h5").exists()  # stopped before any work
    report = json.loads((tmp_path / "userJobMetadata.json").read_text())
    assert report["exit_code"] == 13 and report["device"]["kind"] == "cpu" and report["device"]["gpus"] == 0
    if how != "flag":
        return
    # Without the requirement the same job runs on the CPU, and its report says so.
    proc = run_payload(*args, "--no-require-gpu", cwd=tmp_path, env={**hidden, "PAYLOAD_REQUIRE_GPU": "1"})
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "userJobMetadata.json").read_text())
    assert report["status"] == "success"
    assert (report["device"]["kind"], report["device"]["gpus"], report["device"]["gpu_names"]) == ("cpu", 0, [])


def test_local_gpu_runs_require_the_gpu(tmp_path):
    from submit.local import LocalRun

    config = tmp_path / "job.yaml"
    config.write_text("x")
    with_gpu = LocalRun([str(SAMPLE_A)], [str(SAMPLE_B)], image="img", gpus=True).argv(config, tmp_path / "p")
    without = LocalRun([str(SAMPLE_A)], [str(SAMPLE_B)], image="img").argv(config, tmp_path / "p")
    assert with_gpu[with_gpu.index("--gpus") + 1] == "all" and "--require-gpu" in with_gpu
    assert "--gpus" not in without and "--require-gpu" not in without


@pytest.mark.slow
def test_a_failed_job_hands_back_its_tarball_with_the_error_and_merge_reports_it(tmp_path, trained):
    import tarfile

    bad = _rewrite(SAMPLE_A, tmp_path / "nan.root", _nan_jet_pt(0.02))
    tarball = tmp_path / "failed.tgz"
    with tarfile.open(tarball, "w:gz") as tar:  # a former successful run's tarball under the same name
        for name in ("manifest.json", "metrics.json", "model.keras"):
            tar.add(trained / name, arcname=name)
    proc = _run(tmp_path, bad, SAMPLE_B, tmp_path / "out", _config(tmp_path), "--tarball", str(tarball))
    assert proc.returncode == 7
    with tarfile.open(tarball) as tar:
        assert sorted(tar.getnames()) == ["error.json", "job.log"]
        assert json.load(tar.extractfile("error.json"))["exit_code"] == 7
    merged = tmp_path / "merged"
    proc = run_payload("merge", "-q", str(trained), str(tarball), "--output", str(merged), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((merged / "summary.json").read_text())
    assert summary["merged"] == ["job"]
    (skipped,) = summary["skipped"]
    assert skipped["name"] == "failed" and "NaN" in skipped["reason"]
