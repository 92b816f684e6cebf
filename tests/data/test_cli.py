import pytest

from nngraph import cli
from nngraph.data.corpus import InrDataset


def test_help_shows_every_option_with_default(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["data", "inrs", "--help"])
    assert e.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    for option in ("--images", "--out", "--variant", "--steps", "--lr", "--limit", "--seed", "--shard-size"):
        assert option in out
    assert "(default: digits)" in out and "(default: dwsnet)" in out
    with pytest.raises(SystemExit):
        cli.main(["data", "zoo", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--fixed-arch" in out and "(default: 1000)" in out


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    code = cli.main(["data", "inrs", "--images", str(tmp_path / "missing"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: images folder") and err.count("\n") == 1 and "Traceback" not in err
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "train-images-idx3-ubyte").write_bytes(b"\x01\x02\x03\x04" + b"\x00" * 8)
    (bad / "train-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x00")
    assert cli.main(["data", "inrs", "--images", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "train-images-idx3-ubyte is not an IDX file" in err and err.count("\n") == 1


def test_debug_shows_traceback(tmp_path):
    from nngraph.errors import DataError

    with pytest.raises(DataError):
        cli.main(["data", "inrs", "--images", str(tmp_path / "missing"), "--out", str(tmp_path / "o"), "--debug"])


def test_cli_builds_and_resumes_a_tiny_corpus(tmp_path, capsys):
    args = ["data", "inrs", "--images", "digits", "--out", str(tmp_path / "c"), "--limit", "12", "--steps", "20",
            "--variant", "standard", "--shard-size", "6", "--no-progress"]
    assert cli.main(args) == 0
    ds = InrDataset(tmp_path / "c")
    assert len(ds) == 12 and ds.spec.variant == "standard"
    assert ds.manifest["config"]["recipe"]["steps"] == 20
    capsys.readouterr()
    assert cli.main(args) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert cli.main(args[:-2] + ["4", "--no-progress"]) == 2  # other shard size into the same folder
    assert "other options" in capsys.readouterr().err
