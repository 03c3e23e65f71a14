from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from callwarden.recorder import check_relpath, recording_relpath, spool_path, store_root
from callwarden.recorder.naming import spool_file

SH = ZoneInfo("Asia/Shanghai")


def test_layout_uses_the_datetimes_own_zone():
    # 2026-03-01 00:30 in Shanghai is still 2026-02-28 in UTC: the given zone decides.
    at = datetime(2026, 3, 1, 0, 30, tzinfo=SH)
    assert recording_relpath("acme", "1700000000.42", at) == "acme/2026/03/01/1700000000.42.wav"
    utc = at.astimezone(UTC)
    assert recording_relpath("acme", "c1", utc, "ulaw") == "acme/2026/02/28/c1.ulaw"
    fixed = datetime(2026, 12, 31, 23, 0, tzinfo=timezone(timedelta(hours=-5)))
    assert recording_relpath("t", "u-u-i-d", fixed) == "t/2026/12/31/u-u-i-d.wav"


@pytest.mark.parametrize(
    "bad", ["", ".", "..", "../x", "a/b", "a\\b", "a\0b", ".hidden", "a\nb", "x" * 201, None]
)
def test_hostile_ids_are_rejected(bad):
    at = datetime(2026, 1, 1, tzinfo=SH)
    with pytest.raises(ValueError):
        recording_relpath(bad, "c1", at)
    with pytest.raises(ValueError):
        recording_relpath("acme", bad, at)


def test_error_message_does_not_echo_the_value():
    with pytest.raises(ValueError) as e:
        recording_relpath("acme", "13800138000/../x", datetime(2026, 1, 1, tzinfo=SH))
    assert "13800138000" not in str(e.value)


@pytest.mark.parametrize("ext", ["", "w.av", "../x", "a/b", "wav\0"])
def test_bad_extension(ext):
    with pytest.raises(ValueError):
        recording_relpath("acme", "c1", datetime(2026, 1, 1, tzinfo=SH), ext)


def test_naive_datetime_is_rejected():
    with pytest.raises(ValueError, match="timezone-aware"):
        recording_relpath("acme", "c1", datetime(2026, 1, 1))


def test_spool_and_store_are_apart(tmp_path: Path):
    rel = recording_relpath("acme", "c1", datetime(2026, 1, 2, tzinfo=SH))
    assert spool_path(tmp_path, rel) == tmp_path / "spool" / "acme/2026/01/02/c1.wav"
    assert store_root(tmp_path) == tmp_path / "store"
    assert not spool_path(tmp_path, rel).is_relative_to(store_root(tmp_path))


@pytest.mark.parametrize("rel", ["", "/etc/passwd", "a/../../b", "a//b", "a/./b", "a\\b", "a/\0"])
def test_relpath_escape_attempts(rel, tmp_path: Path):
    with pytest.raises(ValueError):
        check_relpath(rel)
    with pytest.raises(ValueError):
        spool_path(tmp_path, rel)


@pytest.mark.parametrize("root", ["/var/spool/cw", "/var/spool/cw/", "/", "rec", "./rec//x/",
                                  Path("/srv/rec")])
def test_spool_file_is_spool_path_as_text(root):
    """The set-up path's string version names exactly the file pathlib would."""
    rel = recording_relpath("acme", "c1", datetime(2026, 3, 2, 10, tzinfo=UTC))
    assert spool_file(root, rel) == str(spool_path(root, rel))


@pytest.mark.parametrize("rel", ["../x.wav", "a/../../x.wav", "/etc/passwd", "a//b.wav", "./a.wav"])
def test_spool_file_refuses_what_spool_path_refuses(rel):
    with pytest.raises(ValueError):
        spool_file("/var/spool/cw", rel)
