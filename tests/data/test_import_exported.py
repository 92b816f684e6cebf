"""`nngraph data import --format models` on torch.export archives (.pt2): the network is the file,
no --architecture; read only with --trust (torch.export.load can run code from the file)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import nngraph
from nngraph import cli
from nngraph.data.corpus import Corpus

EXPORT_INPUT = torch.zeros(2, 1, 6, 6)  # exported at batch 2: the stored graphs must not keep it


def cnn(width: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, width, 3), nn.Tanh(), nn.Flatten(), nn.Linear(width * 16, 3)).eval()


class TwoInputs(nn.Module):
    def forward(self, x, y):
        return x + y


class CumSum(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)

    def forward(self, x):
        return self.conv(x).cumsum(1)


def save_exported(model: nn.Module, path, inputs=(EXPORT_INPUT,)) -> None:
    torch.export.save(torch.export.export(model, inputs), path)


def cli_error(capsys, args) -> str:
    capsys.readouterr()
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.fixture(name="folder")
def _folder(tmp_path):
    """SRC with ten .pt2 CNNs of two widths and labels.csv; (src, labels, models)."""
    src = tmp_path / "exported"
    src.mkdir()
    models, rows = [cnn(2 + i % 2, i) for i in range(10)], ["file,accuracy"]
    for i, model in enumerate(models):
        save_exported(model, src / f"net{i}.pt2")
        rows.append(f"net{i}.pt2,{0.3 + i / 20}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    return src, tmp_path / "labels.csv", models


def test_a_folder_of_exported_cnns_imports_executes_as_the_modules_and_trains(tmp_path, folder):
    src, labels, models = folder
    args = ["data", "import", str(src), "--format", "models", "--labels", str(labels), "--trust"]
    assert cli.main([*args, "--out", str(tmp_path / "zoo")]) == 0  # no --architecture, no --input-shape
    zoo = Corpus.open(tmp_path / "zoo")
    assert len(zoo) == 10 and len(zoo.architectures) == 2 and zoo.target_kind == "scalar"
    assert zoo.labels.tolist() == pytest.approx([0.3 + i / 20 for i in range(10)])
    assert zoo.manifest["config"]["input_shape"] == [1, 6, 6]
    x = torch.randn(5, 1, 6, 6)  # another batch size than the export's
    for i, model in enumerate(models):
        torch.testing.assert_close(nngraph.execute(zoo.graph(i), x)[0], model(x), atol=1e-6, rtol=1e-6)
        params = nngraph.to_params(zoo.graph(i))
        assert params.keys() == model.state_dict().keys()
        assert all(torch.equal(params[k], v) for k, v in model.state_dict().items())
    run = tmp_path / "run"
    assert cli.main(["train", "--data", str(tmp_path / "zoo"), "--task", "generalize", "--model", "nggnn", "--hidden",
                     "8", "--layers", "1", "--epochs", "1", "--warmup-steps", "1", "--batch-size", "4",
                     "--out", str(run), "--no-progress"]) == 0
    assert "test" in json.loads((run / "metrics.json").read_text())


def test_pt2_and_state_dicts_mix_in_one_folder(tmp_path, folder, capsys):
    src, labels, models = folder
    save_file(models[0].state_dict(), src / "weights0.safetensors")  # width 2 (make_net), as net0.pt2
    labels.write_text(labels.read_text() + "weights0.safetensors,0.9\n")
    args = ["data", "import", str(src), "--format", "models", "--labels", str(labels), "--trust"]
    err = cli_error(capsys, [*args, "--out", str(tmp_path / "no")])
    assert "needs --architecture for state_dict files" in err
    assert cli.main([*args, "--architecture", "tests.data.test_from_models:make_net", "--input-shape", "1,6,6",
                     "--out", str(tmp_path / "zoo")]) == 0
    zoo = Corpus.open(tmp_path / "zoo")
    assert len(zoo) == 11 and len(zoo.architectures) == 2  # the state_dict joins the .pt2 of its architecture
    x = torch.randn(3, 1, 6, 6)
    torch.testing.assert_close(nngraph.execute(zoo.graph(10), x)[0], models[0](x), atol=1e-6, rtol=1e-6)


def test_refusals_name_the_file_in_one_line_and_write_nothing(tmp_path, folder, capsys):
    src, labels, _ = folder
    args = ["data", "import", str(src), "--format", "models", "--labels", str(labels), "--out", str(tmp_path / "out")]
    assert "torch.export.load unpickles" in cli_error(capsys, args)  # no --trust: no .pt2 is opened
    (src / "net3.pt2").write_bytes((src / "net3.pt2").read_bytes()[:2000])
    assert "net3.pt2 is not a readable torch.export archive" in cli_error(capsys, [*args, "--trust"])
    (src / "net3.pt2").write_bytes(b"not a zip")
    assert "net3.pt2 is not a readable torch.export archive" in cli_error(capsys, [*args, "--trust"])
    save_exported(CumSum().eval(), src / "net3.pt2")
    err = cli_error(capsys, [*args, "--trust"])
    assert "net3.pt2 cannot be converted" in err and "cumsum" in err
    save_exported(TwoInputs(), src / "net3.pt2", (EXPORT_INPUT, EXPORT_INPUT))
    assert "net3.pt2 takes 2 inputs" in cli_error(capsys, [*args, "--trust"])
    save_exported(cnn(2, 3), src / "net3.pt2")
    assert "was exported for inputs [2, 1, 6, 6], not [B, 1, 8, 8]" in cli_error(
        capsys, [*args, "--trust", "--input-shape", "1,8,8"])
    torch.jit.save(torch.jit.trace(cnn(2, 3), EXPORT_INPUT), src / "net3.pt2")
    assert "net3.pt2 is a TorchScript archive" in cli_error(capsys, [*args, "--trust"])  # named .pt2 or not
    (src / "net3.pt2").rename(src / "net3.pt")
    labels.write_text(labels.read_text().replace("net3.pt2", "net3.pt"))
    err = cli_error(capsys, [*args, "--trust", "--architecture", "tests.data.test_from_models:make_net",
                             "--input-shape", "1,6,6"])
    assert "net3.pt is a TorchScript archive" in err and "torch.export.save" in err
    assert not (tmp_path / "out").exists()


def bn_cnn(seed: int) -> nn.Module:
    """Conv -> BatchNorm2d -> ReLU -> Linear -> BatchNorm1d -> Linear, running statistics not the initial ones."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 16, 5),
                          nn.BatchNorm1d(5), nn.Tanh(), nn.Linear(5, 2))
    for module in model:
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2.0)
            module.num_batches_tracked.fill_(7 + seed)
            nn.init.uniform_(module.weight, 0.5, 1.5)
            nn.init.uniform_(module.bias, -0.5, 0.5)
    return model.eval()


def test_exported_cnns_with_batchnorm_import_exactly_and_permute_to_the_same_function(tmp_path, capsys):
    """aten.batch_norm (as torch.export.export records a BatchNorm in eval mode) becomes BatchNorm nodes:
    the zoo runs as the modules, gives back every state_dict entry (the step counter as its architecture's
    template holds it, as for a state_dict import), and a neuron permutation keeps the function."""
    from nngraph.graph.permute import permute_graph

    src = tmp_path / "exported"
    src.mkdir()
    models, rows = [bn_cnn(i) for i in range(4)], ["file,accuracy"]
    for i, model in enumerate(models):
        program = torch.export.export(model, (EXPORT_INPUT,))
        assert "aten.batch_norm.default" in {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
        torch.export.save(program, src / f"net{i}.pt2")
        rows.append(f"net{i}.pt2,{i / 4}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    assert cli.main(["data", "import", str(src), "--format", "models", "--labels", str(tmp_path / "labels.csv"),
                     "--trust", "--out", str(tmp_path / "zoo")]) == 0, capsys.readouterr().err
    zoo = Corpus.open(tmp_path / "zoo")
    x = torch.randn(5, 1, 6, 6)
    for i, model in enumerate(models):
        graph = zoo.graph(i)
        torch.testing.assert_close(nngraph.execute(graph, x)[0], model(x), atol=1e-5, rtol=1e-5)
        params = nngraph.to_params(graph)
        assert params.keys() == model.state_dict().keys()
        for k, v in model.state_dict().items():  # the step counter is a buffer of the architecture's template
            assert torch.equal(params[k], v if not k.endswith("num_batches_tracked") else models[0].state_dict()[k]), k
        permuted, perm = permute_graph(graph, seed=i)
        assert not torch.equal(perm, torch.arange(len(perm)))
        torch.testing.assert_close(nngraph.execute(permuted, x)[0], model(x), atol=1e-5, rtol=1e-5)


def test_exported_batchnorm_in_training_mode_is_refused(tmp_path, capsys):
    src = tmp_path / "exported"
    src.mkdir()
    model = bn_cnn(0).train()
    torch.export.save(torch.export.export(model, (EXPORT_INPUT,)), src / "net0.pt2")
    (tmp_path / "labels.csv").write_text("file,accuracy\nnet0.pt2,0.5\n")
    err = cli_error(capsys, ["data", "import", str(src), "--format", "models", "--labels", str(tmp_path / "labels.csv"),
                             "--trust", "--out", str(tmp_path / "zoo")])
    assert "net0.pt2 cannot be converted" in err and "eval" in err
    assert not (tmp_path / "zoo").exists()
