"""``python -m t7synth.convert``: an official-format checkpoint, converted and used by
``predict``, must give what the authors' ``inferer3T.py`` gives; a hostile file must
run no code, whatever the environment says about ``weights_only``."""

from __future__ import annotations

from collections import OrderedDict

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
import yaml
from helpers import write_nifti

from t7synth import convert, evaluate, predict
from t7synth.cli import run_main
from t7synth.inference import official
from t7synth.nets.unet import ConditionedUNet
from t7synth.training.checkpoint import load_model

#: A small net of the paper's family: three levels (inputs padded to multiples of 4).
TINY_NET = {
    "channels": 8,
    "channel_mult": [1, 2, 2],
    "num_res_blocks": 1,
    "attention_levels": [2],
    "norm_groups": 4,
    "context_dim": 1,
}
SHAPE = (20, 17, 23)
#: inferer3T.py's (d1, d2, d3), slice_dim 1: slices of 18 x 21 (padded to 20 x 24 by 1+1 and 1+2).
FRAME = (18, 15, 21)
#: A small age keeps the attention over the three tokens unsaturated, so that the
#: position token visibly changes the output (the test checks it does).
AGE, SEX = 3.0, "F"
#: The file's axes are not RAS+ (a permutation with flips): the authors index the stored array.
AFFINE = np.array([[0, 0, -1.0, 30], [-1.0, 0, 0, 20], [0, 1.0, 0, -10], [0, 0, 0, 1]])


def _config_file(tmp_path, model: str = "unet", net: dict | None = None):
    data = {"model": {"name": model, "net": net or TINY_NET}, "data": {"inference_batch_size": 5}}
    if model == "gan_unet":
        data["model"]["discriminator"] = {"channels": 4, "num_layers": 2}
    path = tmp_path / f"{model}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _official_net(seed: int = 0) -> ConditionedUNet:
    """The tiny net with random weights everywhere (the zero-initialised output layers
    would make every prediction 0)."""
    torch.manual_seed(seed)
    net = ConditionedUNet(in_channels=3, out_channels=1, **TINY_NET)
    with torch.no_grad():
        for name, parameter in net.named_parameters():
            if parameter.ndim > 1:
                parameter.normal_(0, 0.3 / parameter[0].numel() ** 0.5)
            elif "bias" in name:
                parameter.normal_(0, 0.05)
            if ".attn2." in name:  # strong cross-attention: the tokens must show in the output
                parameter.mul_(10)
    return net.eval()


def _save_official(path, net: ConditionedUNet, **extra):
    """The layout of LoadingModel.py's torch.save: DataParallel names, a DataFrame, an array."""
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)
    state = OrderedDict((f"module.{key}", value) for key, value in net.state_dict().items())
    losses = pd.DataFrame(
        {"train_l1": [0.2, 0.1], "test_l1": [0.3, 0.2], "train_perc": [1.5, 1.1], "test_perc": [1.7, 1.2]}
    )
    content = {
        "epoch": 4,
        "model_state_dict": state,
        "opti_state_dict": optimizer.state_dict(),
        "saved_losses": losses,
        "idx_test": np.array([3, 7, 11]),
    }
    torch.save({**content, **extra}, path)
    return path


def _scan(tmp_path):
    """A skull-stripped 3T scan (0 outside an off-centre ellipsoid brain)."""
    rng = np.random.default_rng(1)
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in SHAPE], indexing="ij")).astype(float)
    centre, radii = np.array([10.0, 8.0, 12.0]), np.array([5.4, 4.4, 6.4])
    brain = (((grid - centre[:, None, None, None]) / radii[:, None, None, None]) ** 2).sum(0) < 1
    array = np.where(brain, 300 + 200 * rng.random(SHAPE), 0).astype(np.float32)
    return write_nifti(tmp_path / "sub-01_registered.nii.gz", array, AFFINE)


# -- the reference: pickling.py's normalisation and inferer3T.py's loop, in plain PyTorch --
def _pickling_normalise(image: np.ndarray) -> np.ndarray:
    v = image.flatten()
    v = v[v > 0]
    low, high = np.percentile(v, 1), np.percentile(v, 99)
    v = np.clip(v, low, high)
    return (image - np.min(v)) / (np.max(v) - np.min(v))


def _brain_location(im):
    a, b, c = im.shape
    inside = im > 0
    i, ii, j, jj, k, kk = 0, a - 1, 0, b - 1, 0, c - 1
    while i < ii and not inside[i].any():
        i += 1
    while i < ii and not inside[ii].any():
        ii -= 1
    while j < jj and not inside[:, j].any():
        j += 1
    while j < jj and not inside[:, jj].any():
        jj -= 1
    while k < kk and not inside[:, :, k].any():
        k += 1
    while k < kk and not inside[:, :, kk].any():
        kk -= 1
    return i, ii, j, jj, k, kk


def _inferer3t(net, im, age, sex, ds, n_down, batch_size=4, mid_shift=0.0):
    """inferer3T.py's InfSubj for slice_dim 1, step by step (the network call aside)."""
    i, ii, j, jj, k, kk = _brain_location(im)
    mid = (jj + j) / 2 + mid_shift
    a, b, c = im.shape
    i0, i1_end = max(i - 3, 0), min(ii + 3, a)
    j0, j1_end = max(j - 3, 0), min(jj + 3, b)
    k0, k1_end = max(k - 3, 0), min(kk + 3, c)
    im = im[i0:i1_end, j0:j1_end, k0:k1_end]
    n_d1, n_d2, n_d3 = ds[0], ds[2], ds[1]
    n_slices = ds[1]
    im = np.pad(im, [(0, n_d1 - im.shape[0]), (0, n_d3 - im.shape[1]), (0, n_d2 - im.shape[2])])
    im = np.transpose(im, (1, 0, 2))
    im = np.concatenate((im[:-2, None], im[1:-1, None], im[2:, None]), axis=1)
    num_inputs = im.shape[0]
    x = torch.from_numpy(im)
    r1 = (2**n_down - n_d1 % 2**n_down) % 2**n_down
    r2 = (2**n_down - n_d2 % 2**n_down) % 2**n_down
    x = F.pad(x, (r2 // 2, r2 // 2 + r2 % 2, r1 // 2, r1 // 2 + r1 % 2), "constant", 0)
    ress = torch.zeros(num_inputs, n_d1, n_d2)
    with torch.no_grad():
        for start in range(0, num_inputs, batch_size):
            stop = min(start + batch_size, num_inputs)
            context = torch.ones(stop - start, 3, 1)
            context[:, 0, 0], context[:, 1, 0] = age, sex
            context[:, 2, 0] = 2 * (torch.arange(start, stop) - mid) / n_slices
            out = net(x[start:stop].float(), context)
            ress[start:stop] = out[
                :, 0, r1 // 2 : out.shape[2] - (r1 // 2 + r1 % 2), r2 // 2 : out.shape[3] - (r2 // 2 + r2 % 2)
            ]
    full = torch.zeros(n_d3, n_d1, n_d2)
    full[1:-1] = ress
    ress = torch.transpose(full, 0, 1).numpy()[: i1_end - i0, : j1_end - j0, : k1_end - k0]
    padded = np.zeros((a, b, c), dtype=ress.dtype)
    padded[i0:i1_end, j0:j1_end, k0:k1_end] = ress
    return padded


def _convert(tmp_path, official_file, config_file, frame=FRAME):
    out = tmp_path / "official.ckpt"
    argv = [
        "--official",
        str(official_file),
        "--config",
        str(config_file),
        "--out",
        str(out),
        "--frame",
        *map(str, frame),
    ]
    return run_main(convert.main, argv), out


@pytest.mark.parametrize("model", ["unet", "gan_unet"])
def test_convert_then_predict_reproduces_inferer3t(tmp_path, capsys, model):
    net = _official_net()
    source = _save_official(tmp_path / "my_unet_no_diag.pt", net)
    status, ckpt = _convert(tmp_path, source, _config_file(tmp_path, model))
    assert status == 0, capsys.readouterr().err
    assert str(ckpt) in capsys.readouterr().out

    config = load_model(ckpt).config  # an ordinary t7synth checkpoint (weights_only, strict)
    assert config.model.name == "unet" and config.data.inference == "authors" and config.data.normalisation == "authors"
    assert (config.geometry.axis, config.data.shape, config.model.position_divisor) == (1, list(FRAME), FRAME[1])

    scan = _scan(tmp_path)
    out = tmp_path / "synth.nii.gz"
    argv = [
        "--ckpt",
        str(ckpt),
        "--input",
        str(scan),
        "--output",
        str(out),
        "--age",
        str(AGE),
        "--sex",
        SEX,
        "--no-progress",
    ]
    assert run_main(predict.main, argv) == 0

    raw = nib.load(str(scan)).get_fdata()  # the stored array, as inferer3T.py reads it
    expected = _inferer3t(net, _pickling_normalise(raw), AGE, 1.0, FRAME, n_down=len(TINY_NET["channel_mult"]) - 1)
    produced = nib.load(str(out))
    np.testing.assert_array_equal(produced.affine, nib.load(str(scan)).affine)
    data = np.asarray(produced.dataobj, dtype=np.float64)
    assert expected.std() > 0.01 and (expected < 0).any()  # a real, unclipped prediction
    # The position token matters here: half a slice of shift in the script's mid shows.
    shifted = _inferer3t(
        net, _pickling_normalise(raw), AGE, 1.0, FRAME, n_down=len(TINY_NET["channel_mult"]) - 1, mid_shift=0.5
    )
    assert np.abs(shifted - expected).max() > 1e-3
    np.testing.assert_allclose(data, expected, atol=1e-4)


def test_converted_checkpoint_evaluates_on_the_whole_scan(tmp_path, dataset):
    """evaluate reads a converted checkpoint like any other; its frame is in the scan
    files' axes, so evaluate does not crop RAS+ volumes to it."""
    # The dataset's 20x24x18 volumes, with the authors' margins, fit a 24-voxel frame.
    _, ckpt = _convert(
        tmp_path, _save_official(tmp_path / "o.pt", _official_net()), _config_file(tmp_path), frame=(24, 24, 24)
    )
    pred = tmp_path / "pred"
    assert (
        run_main(
            predict.main,
            ["--ckpt", str(ckpt), "--input", str(dataset), "--split", "test", "--output", str(pred), "--no-progress"],
        )
        == 0
    )
    rows = {}
    for name, source in (
        ("ckpt", ["--ckpt", str(ckpt)]),
        ("config", ["--config", str(_uncropped_authors_config(tmp_path))]),
    ):
        out = tmp_path / f"eval-{name}"
        assert (
            run_main(
                evaluate.main,
                [
                    "--pred",
                    str(pred),
                    "--data",
                    str(dataset),
                    "--split",
                    "test",
                    *source,
                    "--out",
                    str(out),
                    "--no-progress",
                ],
            )
            == 0
        )
        rows[name] = (out / "scores.csv").read_text()
    assert rows["ckpt"] == rows["config"]


def _uncropped_authors_config(tmp_path):
    path = tmp_path / "authors.yaml"
    path.write_text(yaml.safe_dump({"model": {"name": "unet", "net": TINY_NET}, "data": {"normalisation": "authors"}}))
    return path


def test_weights_of_another_net_are_one_line(tmp_path, capsys):
    source = _save_official(tmp_path / "o.pt", _official_net())
    other = _config_file(tmp_path, net={**TINY_NET, "attention_levels": [1, 2]})
    status, out = _convert(tmp_path, source, other)
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and "does not fit" in err[0] and "paper_gan_unet.yaml" in err[0]
    assert not out.exists()


def test_a_t7synth_checkpoint_or_another_model_is_refused(tmp_path, capsys):
    not_official = tmp_path / "t7.ckpt"
    torch.save({"state_dict": {"net.w": torch.zeros(1)}, "hyper_parameters": {"config": {}}}, not_official)
    assert _convert(tmp_path, not_official, _config_file(tmp_path))[0] == 2
    assert "no model_state_dict" in capsys.readouterr().err
    vnet = tmp_path / "vnet.yaml"
    vnet.write_text("model:\n  name: vnet\n")
    assert _convert(tmp_path, _save_official(tmp_path / "o.pt", _official_net()), vnet)[0] == 2
    assert "not 'vnet'" in capsys.readouterr().err


# -- hostile files -------------------------------------------------------------------
class _WritesMarker:
    """Unpickling this would create the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


@pytest.mark.parametrize("environment", [{}, {"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}])
def test_pickled_code_never_runs(tmp_path, capsys, monkeypatch, environment):
    for key, value in environment.items():
        monkeypatch.setenv(key, value)
    marker = tmp_path / "marker"
    hostile = _save_official(tmp_path / "my_unet_no_diag.pt", _official_net(), payload=_WritesMarker(marker))
    status, out = _convert(tmp_path, hostile, _config_file(tmp_path))
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and str(hostile) in err[0] and "builtins.exec" in err[0]
    assert not marker.exists() and not out.exists()


def test_the_global_check_holds_without_weights_only(tmp_path, capsys, monkeypatch):
    """Even a torch.load that ignored weights_only (a torch that let an environment
    variable override it) is never reached with a hostile pickle."""
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *args, **kwargs: real_load(*args, **{**kwargs, "weights_only": False}))
    marker = tmp_path / "marker"
    hostile = _save_official(tmp_path / "o.pt", _official_net(), payload=_WritesMarker(marker))
    assert _convert(tmp_path, hostile, _config_file(tmp_path))[0] == 2
    assert not marker.exists()


def test_plain_pickle_is_refused_unread(tmp_path, capsys):
    import pickle

    marker = tmp_path / "marker"
    hostile = tmp_path / "old.pt"
    hostile.write_bytes(pickle.dumps(_WritesMarker(marker)))
    assert _convert(tmp_path, hostile, _config_file(tmp_path))[0] == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a PyTorch zip checkpoint" in err[0] and not marker.exists()


def test_allow_lists_name_what_pandas_and_numpy_write(tmp_path):
    """The DataFrame and array globals this environment's pandas/numpy pickle are
    allow-listed (the authors' pandas 2 / numpy 1 names are listed beside them), and
    none of them is executed: they unpickle to the inert stand-in."""
    import pickle

    frame = pd.DataFrame({"a": [1.0, 2.0]})
    names = official.pickled_globals(pickle.dumps({"df": frame, "idx": np.arange(3)}, protocol=2))
    assert names <= official.TENSOR_GLOBALS | set(official.DISCARDED_GLOBALS)
    path = tmp_path / "plain.pt"
    torch.save({"model_state_dict": {"w": torch.ones(2)}, "saved_losses": frame, "idx_test": np.arange(3)}, path)
    checkpoint = official.read_official(path)
    assert list(checkpoint.weights) == ["w"] and checkpoint.epoch is None
