"""A training configuration is checked once per path it takes (``nngraph.train`` and ``nngraph train``),
before the device, the run folder or any data is touched; --device names auto, cpu, cuda or cuda:N."""

from __future__ import annotations

import pytest

from nngraph.cli import main
from nngraph.errors import NNGraphError
from nngraph.train import TrainConfig, Trainer, train


def _settings(tmp_path, data, **changes) -> dict:
    base = dict(task="classify", data=str(data), model="mlp", out=str(tmp_path / "run"), epochs=1, batch_size=8,
                model_kwargs={"hidden": 8})
    return {**base, **changes}


def _argv(settings: dict) -> list[str]:
    return ["train", "--task", settings["task"], "--data", settings["data"], "--model", settings["model"],
            "--out", settings["out"], "--epochs", str(settings["epochs"]), "--batch-size",
            str(settings["batch_size"]), "--hidden", "8", "--device", settings.get("device", "auto"), "--no-progress"]


@pytest.fixture
def validations(monkeypatch) -> list[TrainConfig]:
    """The configs ``TrainConfig.validate`` is called on, in order."""
    seen: list[TrainConfig] = []
    original = TrainConfig.validate

    def counted(self):
        seen.append(self)
        original(self)

    monkeypatch.setattr(TrainConfig, "validate", counted)
    return seen


def test_the_library_and_the_cli_check_a_config_once_per_run(tmp_path, inr_corpus, validations, capsys):
    config = TrainConfig(**_settings(tmp_path / "library", inr_corpus))
    train(config, progress=False)
    assert validations == [config]
    validations.clear()
    assert main(_argv(_settings(tmp_path / "cli", inr_corpus))) == 0
    assert len(validations) == 1 and (tmp_path / "cli" / "run" / "metrics.json").exists()
    capsys.readouterr()


def test_a_trainer_made_directly_still_checks_its_config(tmp_path, inr_corpus, validations):
    with pytest.raises(NNGraphError, match="--epochs"):
        Trainer(TrainConfig(**_settings(tmp_path, inr_corpus, epochs=0)))
    assert len(validations) == 1


@pytest.mark.parametrize("bad, needle", [({"epochs": 0}, "--epochs"), ({"device": "gpu"}, "'gpu'")])
def test_an_invalid_config_is_refused_in_one_line_before_the_run_folder_or_data(tmp_path, bad, needle, capsys):
    """The data do not exist, and --out holds a finished run that --overwrite would clear: the refusal
    names the setting, and the old run is still there."""
    settings = _settings(tmp_path, tmp_path / "no-corpus", **bad)
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text("{}")
    with pytest.raises(NNGraphError, match=needle) as info:
        train(TrainConfig(**settings), progress=False, overwrite=True)
    assert "\n" not in str(info.value)
    assert main(_argv(settings) + ["--overwrite"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and needle in err, err
    assert (run / "metrics.json").read_text() == "{}"


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:0", "cuda:12", "CUDA:1", " cpu"])
def test_device_names_that_validate(tmp_path, device):
    """As ``resolve_device`` reads them: any case, spaces around."""
    TrainConfig(**_settings(tmp_path, tmp_path, device=device)).validate()


@pytest.mark.parametrize("device", ["gpu", "tpu", "cuda:", "cuda:-1", "cuda:x", "cuda0", "cuda:0:1", "cuda: 1", "",
                                    "auto,cpu"])
def test_other_device_names_are_refused_in_one_line_naming_the_value_and_the_choices(tmp_path, device):
    with pytest.raises(NNGraphError) as info:
        TrainConfig(**_settings(tmp_path, tmp_path, device=device)).validate()
    message = str(info.value)
    assert "\n" not in message and "--device" in message and repr(device) in message, message
    assert "auto, cpu, cuda or cuda:N" in message, message
