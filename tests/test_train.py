import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from fashionsearchnet import checkpoint as ckpt
from fashionsearchnet.cli import main
from fashionsearchnet.losses import fsn_losses
from fashionsearchnet.model import FashionSearchNet, ModelConfig
from fashionsearchnet.train import TrainConfig, load_config

from conftest import TINY_TRAIN as TINY


def _weights(run, name=ckpt.LAST_FILE):
    return load_file(str(run / name))


def _max_diff(a, b):
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_train_step_cpu(precision):
    from fashionsearchnet.device import autocast, resolve_precision

    torch.manual_seed(0)
    cfg = ModelConfig(num_values=(3, 2), backbone="alexnet", image_size=64, conv_channels=16, hidden=16, embed_dim=8, region_pairs=((1, 0),))
    m = FashionSearchNet(cfg).train()
    opt = torch.optim.AdamW(m.parameters(), 1e-3)
    x, y = torch.randn(6, 3, 64, 64), torch.tensor([[0, 1], [0, 0], [1, 1], [1, -1], [2, 0], [2, 1]])
    before = {k: v.clone() for k, v in m.state_dict().items()}
    dtype = resolve_precision(precision, torch.device("cpu"))
    with autocast(torch.device("cpu"), dtype):
        out = m(x, y)
    parts = fsn_losses(out, y, cfg.num_values, {"aam": 1, "attr_ce": 1, "attr_triplet": 1, "global_triplet": 1}, 0.5, "semi_hard")
    assert set(parts) == {"aam", "attr_ce", "attr_triplet", "global_triplet", "total"}
    assert all(torch.isfinite(v) for v in parts.values())
    parts["total"].backward()
    opt.step()
    assert any(not torch.equal(before[k], v) for k, v in m.state_dict().items())


def test_config_loading_and_errors(tmp_path):
    cfg = load_config("synthetic", ["epochs_global=2", "localization=false", "lr=0.01"])
    assert cfg.epochs_global == 2 and cfg.localization is False and cfg.lr == 0.01 and cfg.image_size == 128
    assert load_config(None, ["pretrained=/x/alexnet.pth"]).pretrained == "/x/alexnet.pth"
    with pytest.raises(ValueError, match="unknown config keys: epoch; valid keys: backbone"):
        load_config(None, ["epoch=3"])
    with pytest.raises(ValueError, match="p expects an integer"):
        load_config(None, ["p=two"])
    with pytest.raises(ValueError, match="mining must be one of"):
        load_config(None, ["mining=hardest"])
    (tmp_path / "c.toml").write_text("lr = [1")
    with pytest.raises(ValueError, match="not valid TOML"):
        load_config(str(tmp_path / "c.toml"))
    assert TrainConfig().stages()[0][0] == "localization"


def test_fsn_train_end_to_end_and_checkpoint_roundtrip(synth_small, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--data", str(synth_small), "--out", str(run), *TINY]) == 0
    for f in ("model.safetensors", "model.json", "last.safetensors", "train_state.pt", "run_config.json", "metrics.jsonl", "prototypes.safetensors", "summary.json"):
        assert (run / f).is_file(), f
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in rows] == ["localization", "attributes", "global"]
    assert rows[-1]["loss"]["global_triplet"] > 0 and rows[0]["loss"]["attr_ce"] == 0
    model, schema = ckpt.load_model(run)
    # each epoch logs its val ROIs' mean share of the picture per attribute, and the run ends with the chosen epoch's
    assert all(len(r["val"]["roi_area"]) == len(schema.names) and all(0 < a <= 1 for a in r["val"]["roi_area"]) for r in rows)
    chosen = [r for r in rows if r["selected"]][-1]["val"]["roi_area"]
    assert f"ROI area on val, share of the picture (a map that does not localize gives a large one): {schema.names[0]} {chosen[0]:.2f}" in capsys.readouterr().out
    assert schema.names[0] == "category" and model.cfg.image_size == 64
    meta = ckpt.read_meta(run)
    assert meta["preprocessing"]["resize"] == [64, 64] and meta["epoch"] == 3
    # round trip: save and load gives the same weights and outputs
    ckpt.save_model(tmp_path / "copy.safetensors", model, schema)
    again, _ = ckpt.load_model(tmp_path / "copy.safetensors")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x).global_rep, again(x).global_rep)
    # refusing to clobber, and telling how to continue
    assert main(["train", "--data", str(synth_small), "--out", str(run), *TINY]) == 2
    assert "--resume" in capsys.readouterr().err


def test_checkpoint_errors(tmp_path):
    with pytest.raises(ckpt.CheckpointError, match="no model file"):
        ckpt.load_model(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ckpt.CheckpointError, match="not a readable safetensors file"):
        ckpt.load_model(tmp_path)


def test_train_refuses_empty_val(synth_small, tmp_path):
    import shutil

    cat = tmp_path / "cat"
    shutil.copytree(synth_small, cat)
    csv = (cat / "catalog.csv").read_text().replace(",val,", ",train,")
    (cat / "catalog.csv").write_text(csv)
    assert main(["train", "--data", str(cat), "--out", str(tmp_path / "r"), *TINY]) == 2


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_result(synth_small, tmp_path):
    args = ["--data", str(synth_small), *TINY, "batches_per_epoch=6"]
    assert main(["train", "--out", str(tmp_path / "full"), *args]) == 0
    killed = tmp_path / "killed"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "fashionsearchnet.cli", "train", "--out", str(killed), *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if (killed / "metrics.jsonl").is_file() and (killed / "metrics.jsonl").read_text().count("\n") >= 1:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "summary.json").exists()
    assert main(["train", "--out", str(killed), "--data", str(synth_small), "--resume"]) == 0
    assert _max_diff(_weights(tmp_path / "full"), _weights(killed)) < 1e-4
    assert (killed / "metrics.jsonl").read_text().count("\n") == 3


@pytest.mark.slow
def test_ddp_two_processes_match_gradient_accumulation(synth_small, tmp_path):
    """2 gloo processes, one batch each per step == 1 process accumulating both batches.

    Both run with one thread per process: oneDNN picks kernels by thread count, and different
    kernels round differently (then ROI thresholds can flip). With equal kernels the two runs must
    agree to float precision.
    """
    args = ["--data", str(synth_small), *TINY, "batches_per_epoch=4", "augment=true"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    single = [sys.executable, "-m", "fashionsearchnet.cli", "train", "--out", str(tmp_path / "single"), *args, "grad_accum=2"]
    res = subprocess.run(single, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    ddp = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "fashionsearchnet.cli", "train", "--out", str(tmp_path / "ddp"), *args, "device=cpu"]
    res = subprocess.run(ddp, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "world size 2" in res.stdout
    w_single, w_ddp = _weights(tmp_path / "single"), _weights(tmp_path / "ddp")
    assert _max_diff(w_single, w_ddp) < 1e-5
    rows = [json.loads(x) for x in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["batches"] == 2  # each rank took half of the 4 batches
    # the runs did train: the weights moved away from their initialisation by far more than they differ
    from fashionsearchnet.checkpoint import read_meta

    torch.manual_seed(0)
    init = FashionSearchNet(ModelConfig.from_dict(read_meta(tmp_path / "ddp" / "last.safetensors")["model_config"]), pretrained=True).state_dict()
    assert _max_diff(w_ddp, {k: init[k] for k in w_ddp}) > 1e-3


def test_per_attribute_roi_thresholds():
    from fashionsearchnet.localization import boxes_from_maps
    from fashionsearchnet.train import TrainConfig

    names = ("category", "color", "sleeve_color")
    assert TrainConfig().thresholds(names) == ()
    assert TrainConfig(roi_threshold=0.4, roi_thresholds="sleeve_color=0.7, category=0.3").thresholds(names) == (0.3, 0.4, 0.7)
    for bad, msg in (("collar=0.5", "attribute=value with an attribute of"), ("color", "attribute=value"),
                     ("color=high", "not a number"), ("color=1.0", r"in \[0, 1\)")):
        with pytest.raises(ValueError, match=msg):
            TrainConfig(roi_thresholds=bad).thresholds(names)
    # an entry for a held-out attribute is skipped (the config was written for the whole catalog) ...
    held = TrainConfig(roi_threshold=0.4, roi_thresholds="sleeve_color=0.7,category=0.3", hold_out="sleeve_color")
    assert held.thresholds(names[:2]) == (0.3, 0.4)
    with pytest.raises(ValueError, match="attribute=value with an attribute of"):  # ... and only that one
        dataclasses.replace(held, roi_thresholds="neckline=0.7").thresholds(names[:2])
    with pytest.raises(ValueError, match="entries for"):
        ModelConfig(num_values=(3, 2), roi_thresholds=(0.5,))
    cfg = ModelConfig(num_values=(3, 2, 4), backbone="alexnet", image_size=64, conv_channels=16, hidden=16, embed_dim=8, roi_thresholds=(0.2, 0.5, 0.8))
    assert ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg  # stored with the checkpoint
    m = FashionSearchNet(cfg).eval()
    maps = torch.rand(4, 3, 7, 7, generator=torch.Generator().manual_seed(0))
    rois = m.forward_rois(maps)
    for a, t in enumerate(cfg.roi_thresholds):
        assert torch.equal(rois[:, a], boxes_from_maps(maps[:, a], t, cfg.roi_upsample))


def test_roi_norm_is_stored_and_used():
    from fashionsearchnet.localization import boxes_from_maps
    from fashionsearchnet.train import TrainConfig

    with pytest.raises(ValueError, match="roi_norm"):
        ModelConfig(num_values=(3, 2), roi_norm="zscore")
    with pytest.raises(ValueError, match="roi_norm must be minmax or median"):
        TrainConfig(roi_norm="zscore").validate()  # before any data is read
    cfg = TrainConfig(roi_norm="median", roi_threshold=0.4, backbone="alexnet", image_size=64, conv_channels=16, hidden=16, embed_dim=8).model_config((3, 2), ())
    assert cfg.roi_norm == "median"
    assert ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    old = cfg.to_dict()
    del old["roi_norm"]  # a checkpoint written before the option keeps min-max scaling
    assert ModelConfig.from_dict(old).roi_norm == "minmax"
    m = FashionSearchNet(cfg).eval()
    maps = torch.randn(5, 2, 9, 9, generator=torch.Generator().manual_seed(1))
    rois = m.forward_rois(maps)
    for a in range(2):
        assert torch.equal(rois[:, a], boxes_from_maps(maps[:, a], 0.4, cfg.roi_upsample, "median"))


def test_bad_model_option_with_force_loses_nothing(trained, synth_small, tmp_path, capsys):
    """A model option that fails its checks (here a threshold for an unknown attribute, a pooling
    stage that does not exist, a stride to remove where there is none) stops `fsn train --force` before the old run is touched."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    for bad, why in (("roi_thresholds=collar=0.5", "attribute=value with an attribute of"), ("pool_from=conv4", "pool_from must be conv5 or maps"),
                     ("dilate_from=3", "no stride-2 convolution")):
        assert main(["train", "--data", str(synth_small), "--out", str(run), *TINY, bad, "--force"]) == 2
        assert why in capsys.readouterr().err
        assert {p.name: p.read_bytes() for p in run.iterdir()} == before


def test_coarse_maps_option():
    """``coarse_maps=NAME`` (with ``dilate_from``) gives that attribute its maps from a second head on
    every other cell of the dilated grid: the same as that head on the undilated backbone's grid,
    repeated onto the fine grid; the other attributes' maps never read it. Checked and stored."""
    import torch.nn.functional as F

    from fashionsearchnet.train import TrainConfig

    names = ("category", "neckline", "color")
    base = dict(backbone="mobilenet_v2", pretrained=False, map_stage=6, pool_from="maps", aam_pooling="lse", image_size=64,
                conv_channels=8, hidden=16, embed_dim=8, frozen_stages=0)
    cfg = TrainConfig(coarse_maps="neckline", coarse_channels=6, dilate_from=4, **base).model_config((3, 2, 4), (), names)
    assert (cfg.coarse_maps, cfg.coarse_channels) == ((1,), 6)
    assert ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    old = cfg.to_dict()
    del old["coarse_maps"], old["coarse_channels"]  # checkpoints written before the option: one head
    assert ModelConfig.from_dict(old).coarse_maps == ()
    with pytest.raises(ValueError, match="coarse_maps: unknown attribute 'collar'"):
        TrainConfig(coarse_maps="collar", dilate_from=4, **base).model_config((3, 2, 4), (), names)
    assert TrainConfig(coarse_maps="collar", hold_out="collar", dilate_from=4, **base).model_config((3, 2, 4), (), names).coarse_maps == ()
    with pytest.raises(ValueError, match="coarse_maps needs"):
        TrainConfig(coarse_maps="neckline", **base).model_config((3, 2, 4), (), names)

    torch.manual_seed(3)
    m = FashionSearchNet(cfg).eval()
    ref = FashionSearchNet(dataclasses.replace(cfg, dilate_from=-1, coarse_maps=())).eval()  # the undilated backbone
    ref.backbone.load_state_dict(m.backbone.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        conv7, logits = m.forward_maps(m.forward_features(x))
        maps = m.all_activation_maps(conv7)
        coarse_in = ref.forward_features(x).maps_in
        coarse7 = F.relu(m.conv7c(F.relu(m.conv6c(coarse_in))))
        want = torch.einsum("vk,bkhw->bvhw", m.gap_classifier.weight[3:5, 8:], coarse7)
    assert maps.shape[-2:] == (2 * coarse_in.shape[-2], 2 * coarse_in.shape[-1])
    torch.testing.assert_close(maps[:, 3:5], F.interpolate(want, scale_factor=2, mode="nearest"), atol=1e-4, rtol=1e-4)
    with torch.no_grad():  # the fine attributes' maps do not read the coarse head, the coarse one does not read conv7
        m.conv7c.weight.add_(1.0)
        m.conv7.weight.add_(1.0)
        maps2 = m.all_activation_maps(m.forward_maps(m.forward_features(x))[0])
        m.conv7.weight.sub_(1.0)
        maps3 = m.all_activation_maps(m.forward_maps(m.forward_features(x))[0])
    assert not torch.allclose(maps2[:, :3], maps[:, :3]) and not torch.allclose(maps2[:, 3:5], maps[:, 3:5])
    torch.testing.assert_close(maps3[:, :3], maps[:, :3])
    torch.testing.assert_close(maps3[:, 5:], maps[:, 5:])
    out = m(x)  # the whole pass runs, ROIs on the fine grid
    assert out.grid == tuple(maps.shape[-2:]) and out.rois.shape == (2, 3, 4)


def test_attribute_rois_option():
    """``attribute_rois=NAME`` draws that attribute's ROI from its attribute-level map (the mean of
    its values' normalised maps); the others keep their value's map; stored in the checkpoint."""
    from fashionsearchnet.localization import attribute_maps, boxes_from_maps
    from fashionsearchnet.train import TrainConfig

    names = ("category", "neckline", "color")
    tc = TrainConfig(attribute_rois="neckline", backbone="alexnet", image_size=64, conv_channels=16, hidden=16, embed_dim=8)
    cfg = tc.model_config((3, 2, 4), (), names)
    assert cfg.attribute_rois == (1,)
    assert ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    old = cfg.to_dict()
    del old["attribute_rois"]  # checkpoints written before the option: value maps everywhere
    assert ModelConfig.from_dict(old).attribute_rois == ()
    with pytest.raises(ValueError, match="unknown attribute 'collar'"):
        TrainConfig(attribute_rois="collar").model_config((3, 2, 4), (), names)
    assert TrainConfig(attribute_rois="collar", hold_out="collar").model_config((3, 2, 4), (), names).attribute_rois == ()
    with pytest.raises(ValueError, match="attribute_rois"):
        ModelConfig(num_values=(3, 2), attribute_rois=(2,))
    m = FashionSearchNet(cfg).eval()
    torch.manual_seed(2)
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        conv7, logits = m.forward_maps(m.forward_features(x))
        values = m.predict_values(logits)
        value_maps = m.activation_maps(conv7, values)
        level = attribute_maps(m.all_activation_maps(conv7), cfg.num_values)
        rois = m(x).rois
    for a in range(3):
        src = level[:, a] if a == 1 else value_maps[:, a]
        assert torch.equal(rois[:, a], boxes_from_maps(src, cfg.roi_threshold, cfg.roi_upsample, cfg.roi_norm))
    assert not torch.equal(level[:, 1], value_maps[:, 1].float())


def test_median_rois_option():
    """``median_rois=NAME`` scales that attribute's maps by their median before the threshold (the
    others keep ``roi_norm``); stored in the checkpoint, refused for an unknown attribute."""
    from fashionsearchnet.localization import boxes_from_maps
    from fashionsearchnet.train import TrainConfig

    names = ("category", "neckline", "color")
    tc = TrainConfig(median_rois="neckline", roi_thresholds="neckline=0.4", backbone="alexnet", image_size=64, conv_channels=16, hidden=16, embed_dim=8)
    cfg = tc.model_config((3, 2, 4), (), names)
    assert cfg.median_rois == (1,) and [cfg.norm_of(a) for a in range(3)] == ["minmax", "median", "minmax"]
    assert ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    old = cfg.to_dict()
    del old["median_rois"]  # checkpoints written before the option: roi_norm everywhere
    assert ModelConfig.from_dict(old).median_rois == ()
    with pytest.raises(ValueError, match="median_rois: unknown attribute 'collar'"):
        TrainConfig(median_rois="collar").model_config((3, 2, 4), (), names)
    with pytest.raises(ValueError, match="median_rois"):
        ModelConfig(num_values=(3, 2), median_rois=(0, 0))
    m = FashionSearchNet(cfg).eval()
    maps = torch.randn(5, 3, 9, 9, generator=torch.Generator().manual_seed(1))
    maps[:, :, 3:7, 3:7] -= 5.0
    rois = m.forward_rois(maps)
    for a in range(3):
        assert torch.equal(rois[:, a], boxes_from_maps(maps[:, a], cfg.threshold_of(a), cfg.roi_upsample, cfg.norm_of(a)))
    assert not torch.equal(rois[:, 1], boxes_from_maps(maps[:, 1], 0.4, cfg.roi_upsample, "minmax"))


def test_max_maps_option():
    """``max_maps=NAME`` max-pools that attribute's class-score maps (the others keep aam_pooling):
    resolved by name, held-out attributes skipped, stored in the checkpoint, absent from older ones
    (none), refused for an unknown or repeated attribute. The pooling itself: the loop test in
    test_backbones_model.py."""
    from fashionsearchnet.train import TrainConfig

    names = ("category", "neckline", "color")
    tc = TrainConfig(max_maps="neckline, color", aam_pooling="lse", backbone="alexnet", image_size=64, conv_channels=16, hidden=16, embed_dim=8)
    cfg = tc.model_config((3, 2, 4), (), names)
    assert cfg.max_maps == (1, 2) and cfg.aam_pooling == "lse"
    assert ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    old = cfg.to_dict()
    del old["max_maps"]
    assert ModelConfig.from_dict(old).max_maps == ()
    assert FashionSearchNet(cfg).value_max.tolist() == [False] * 3 + [True] * 6
    held = TrainConfig(max_maps="neckline", hold_out="neckline", backbone="alexnet").model_config((3, 4), (), ("category", "color"))
    assert held.max_maps == ()
    with pytest.raises(ValueError, match="max_maps: unknown attribute 'collar'"):
        TrainConfig(max_maps="collar").model_config((3, 2, 4), (), names)
    with pytest.raises(ValueError, match="max_maps"):
        ModelConfig(num_values=(3, 2), max_maps=(1, 1))
    with pytest.raises(ValueError, match="need the attribute names"):
        TrainConfig(max_maps="neckline").model_config((3, 2, 4), ())
