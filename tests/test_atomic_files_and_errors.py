"""The two helpers every command writes and fails through: atomic writes, and one-line errors."""

import os
import stat

import pytest

from post_decoder.atomic_files import atomic_directory, atomic_file
from post_decoder.errors import InputError, run_command


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_file_replaces_only_when_complete(tmp_path):
    target = tmp_path / "metrics.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_file(str(target)) as temporary:
            with open(temporary, "w") as handle:
                handle.write("half of the new")
            raise RuntimeError("crash while writing")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["metrics.json"]  # no stray temporary file

    with atomic_file(str(target)) as temporary:
        assert temporary.endswith(".json")  # savers that read the extension (matplotlib) still work
        with open(temporary, "w") as handle:
            handle.write("new")
    assert target.read_text() == "new"
    assert os.listdir(tmp_path) == ["metrics.json"]


def test_atomic_directory_keeps_the_old_folder_on_a_crash(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "weights").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_directory(str(folder)) as staging:
            open(os.path.join(staging, "weights"), "w").write("new")
            raise RuntimeError("crash while saving")
    assert (folder / "weights").read_text() == "old"
    assert sorted(os.listdir(tmp_path)) == ["run"]

    with atomic_directory(str(folder)) as staging:
        open(os.path.join(staging, "weights"), "w").write("new")
    assert (folder / "weights").read_text() == "new"
    assert sorted(os.listdir(tmp_path)) == ["run"]


def test_results_follow_the_users_umask(tmp_path):
    previous = os.umask(0o022)
    try:
        with atomic_directory(str(tmp_path / "folder")):
            pass
        with atomic_file(str(tmp_path / "file.txt")) as temporary:
            open(temporary, "w").write("x")
    finally:
        os.umask(previous)
    assert _mode(tmp_path / "folder") == 0o755  # not mkdtemp's private 0o700
    assert _mode(tmp_path / "file.txt") == 0o644  # not mkstemp's private 0o600


def _failing_main(argv):
    raise InputError(f"data.json line 3: 'image' must be a file name, got 12345 ({argv})")


def test_input_errors_are_one_line_and_exit_2(capsys, monkeypatch):
    monkeypatch.delenv("POST_DECODER_DEBUG", raising=False)
    with pytest.raises(SystemExit) as stop:
        run_command(_failing_main, ["--flag"], program="tool")
    assert stop.value.code == 2
    error = capsys.readouterr().err
    assert error == "tool: error: data.json line 3: 'image' must be a file name, got 12345 (['--flag'])\n"
    assert "Traceback" not in error


def test_debug_shows_the_traceback(monkeypatch):
    monkeypatch.delenv("POST_DECODER_DEBUG", raising=False)
    with pytest.raises(InputError):  # `--debug` is taken out of argv and the error propagates
        run_command(_failing_main, ["--debug"], program="tool")
    monkeypatch.setenv("POST_DECODER_DEBUG", "1")
    with pytest.raises(InputError):
        run_command(_failing_main, [], program="tool")


def test_other_errors_are_not_hidden():
    def broken(argv):
        raise KeyError("a bug, not bad input")

    with pytest.raises(KeyError):
        run_command(broken, [], program="tool")
