"""slimkernels._device.check_device, and the entry points that take a device name."""
import pytest
import torch

from slimkernels._device import check_device


def test_valid_names():
    assert check_device("cpu") == torch.device("cpu")
    assert check_device(torch.device("cpu")) == torch.device("cpu")


@pytest.mark.parametrize("name", ["gpu", "", "cuda:x", 3.5])
def test_not_a_device_name(name):
    with pytest.raises(ValueError, match="is not a device name"):
        check_device(name)


def test_cuda_without_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for name in ("cuda", "cuda:0"):
        with pytest.raises(ValueError, match="no CUDA GPU is available.*use 'cpu'"):
            check_device(name)


def test_cuda_index_out_of_range(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert check_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(ValueError, match=r"has 2 CUDA device\(s\); use cuda:0..cuda:1"):
        check_device("cuda:2")


def test_entry_points_report_a_missing_gpu(monkeypatch, tmp_path, capsys):
    from slimkernels.cli import main
    from slimkernels.pretrained import load_model
    from slimkernels.training.trainer import TrainConfig, Trainer

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="no CUDA GPU"):
        load_model(device="cuda")
    png = tmp_path / "a.png"
    import numpy as np
    import PIL.Image
    PIL.Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(png)
    assert main(["compress", str(png), str(tmp_path / "a.slim"), "--device", "cuda"]) == 1
    err = capsys.readouterr().err
    assert "no CUDA GPU" in err and "Traceback" not in err
    assert not (tmp_path / "a.slim").exists()
    with pytest.raises(ValueError, match="no CUDA GPU"):
        Trainer(TrainConfig(data=str(tmp_path), out=str(tmp_path / "run"), device="cuda"))


@pytest.mark.parametrize("name", ["cpu", "cuda", "cuda:0", "cuda:12", "cpu:0", "CPU", "cuda:01",
                                  "cuda:-1", "cuda:x", "mps", "meta", "", " cpu", "cuda:0:1"])
def test_cli_device_takes_what_torch_names_a_cpu_or_cuda_device(name):
    """``cli_device`` answers plain names without torch (a regular expression) and the rest
    through ``torch.device``: either way exactly the names torch parses as a CPU or CUDA
    device."""
    import argparse
    from slimkernels._device import cli_device
    try:
        ok = torch.device(name).type in ("cpu", "cuda")
    except (RuntimeError, TypeError):
        ok = False
    if ok:
        assert cli_device(name) == name
    else:
        with pytest.raises(argparse.ArgumentTypeError, match="not a device the transforms run on"):
            cli_device(name)


def test_lazy_package_names_resolve():
    """The names ``slimkernels``, ``slimkernels.training`` and ``slimkernels.evaluation`` import
    on first use are the submodules' own; others raise AttributeError naming them."""
    import slimkernels
    import slimkernels.evaluation as ev
    import slimkernels.training as tr
    from slimkernels.backend import resolve_backend
    from slimkernels.evaluation.metrics import psnr
    from slimkernels.training.lambdas import LambdaScheduler
    from slimkernels.training.trainer import TrainConfig
    assert slimkernels.resolve_backend is resolve_backend
    assert ev.psnr is psnr and tr.TrainConfig is TrainConfig
    assert tr.LambdaScheduler is LambdaScheduler
    for mod in (slimkernels, ev, tr):
        assert set(mod.__all__) <= set(dir(mod))
        for name in mod.__all__:
            assert getattr(mod, name) is not None
        with pytest.raises(AttributeError, match="no_such_name"):
            getattr(mod, "no_such_name")
