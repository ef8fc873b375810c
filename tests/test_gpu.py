"""The GPU code path: run on a machine with a CUDA GPU (they skip elsewhere, CI included).

    python -m pytest tests/test_gpu.py

What they check: the same model gives the same function on the GPU as on the CPU (fp32 with
TF32 off; bf16 autocast within bf16 rounding), a bf16 training step on the GPU, and a run trained
by ``fsn train`` on the GPU that loads on the CPU and embeds the same there, and connected
components and ROI boxes computed on the GPU equal to the CPU's.
"""

import pytest
import torch

from fashionsearchnet import checkpoint as ckpt
from fashionsearchnet.device import autocast, prepare_input, prepare_model, resolve_device, resolve_precision
from fashionsearchnet.losses import fsn_losses
from fashionsearchnet.model import FashionSearchNet, ModelConfig

from conftest import TINY_TRAIN

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

WEIGHTS = {"aam": 1.0, "attr_ce": 1.0, "attr_triplet": 1.0, "global_triplet": 1.0}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().cpu(), b.double().cpu()
    return float((a - b).norm() / b.norm())


def _model(backbone="alexnet", pretrained=False, image_size=96):
    torch.manual_seed(0)
    cfg = ModelConfig(num_values=(5, 4, 3), backbone=backbone, image_size=image_size, conv_channels=32, hidden=32,
                      embed_dim=16, region_pairs=((1, 2),))
    return FashionSearchNet(cfg, pretrained=pretrained).eval()


@pytest.fixture
def no_tf32():
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def test_auto_device_and_precision_pick_the_gpu():
    dev = resolve_device("auto")
    assert dev.type == "cuda"
    assert resolve_precision("auto", dev) == torch.bfloat16


@pytest.mark.parametrize("backbone,pretrained", [("alexnet", False), ("mobilenet_v2", True)])
def test_gpu_forward_matches_cpu(backbone, pretrained, no_tf32):
    cpu_model = _model(backbone, pretrained)
    gpu_model = prepare_model(_model(backbone, pretrained), torch.device("cuda"))
    x = torch.randn(8, 3, 96, 96, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([[i % 5, i % 4, i % 3] for i in range(8)])
    dev = torch.device("cuda")
    with torch.no_grad():
        ref = cpu_model(x, y)
        xg = prepare_input(x, dev)
        feats = gpu_model.forward_features(xg)
        conv7, gap = gpu_model.forward_maps(feats)
        assert _rel(feats.conv5, cpu_model.forward_features(x).conv5) < 1e-4
        assert _rel(gap, ref.gap_logits) < 1e-4
        # a box can differ where a map cell sits on the threshold: compare most boxes, then the
        # pooled representations on the CPU's boxes
        rois = gpu_model.forward_rois(gpu_model.activation_maps(conv7, y.to(dev)))
        assert (rois.cpu() == ref.rois).all(-1).float().mean() >= 0.9
        reps, logits = gpu_model.forward_attributes(feats, ref.rois.to(dev))
        assert _rel(reps, ref.reps) < 1e-4 and _rel(logits, ref.attr_logits) < 1e-4
        with autocast(dev, torch.bfloat16):
            half = gpu_model(xg, y.to(dev))
        assert half.global_rep.isfinite().all()
        # bf16 operands: the error lands between 1e-3 and a few 1e-2 through a deep network
        assert _rel(half.gap_logits.float(), ref.gap_logits) < 5e-2


def test_bf16_train_step_on_gpu():
    dev = torch.device("cuda")
    model = prepare_model(_model(), dev).train()
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = prepare_input(torch.randn(12, 3, 96, 96), dev)
    y = torch.tensor([[i % 5, i % 4, (i // 2) % 3] for i in range(12)], device=dev)
    y[3, 1] = -1  # an unknown label is ignored, not a class
    with autocast(dev, torch.bfloat16):
        out = model(x, y)
    parts = fsn_losses(out, y, model.cfg.num_values, WEIGHTS, 0.5, "semi_hard")
    assert all(torch.isfinite(v) for v in parts.values()), parts
    parts["total"].backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and g.isfinite().all() for g in grads)
    opt.step()
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_gpu_trained_run_loads_and_embeds_on_cpu(synth_small, tmp_path, capsys, no_tf32):
    from fashionsearchnet.cli import main
    from fashionsearchnet.data import normalise

    run = tmp_path / "run"
    assert main(["train", "--data", str(synth_small), "--out", str(run), *TINY_TRAIN, "device=cuda"]) == 0
    said = capsys.readouterr()
    assert "device cuda" in said.out + said.err and "bfloat16" in said.out + said.err
    cpu_model, _ = ckpt.load_model(run, "cpu")
    gpu_model, _ = ckpt.load_model(run, "cuda")
    x = normalise(torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8), cpu_model.cfg.mean, cpu_model.cfg.std)
    with torch.no_grad():
        a = cpu_model.eval()(x).global_rep
        b = gpu_model.eval()(x.cuda()).global_rep
    assert _rel(b, a) < 1e-4


def test_boxes_on_gpu_equal_cpu():
    from fashionsearchnet.localization import boxes_from_maps, connected_components

    g = torch.Generator().manual_seed(5)
    masks = torch.rand(300, 26, 26, generator=g) < torch.rand(300, 1, 1, generator=g) * 0.7
    assert torch.equal(connected_components(masks.cuda()).cpu(), connected_components(masks))
    maps = torch.randn(300, 13, 13, generator=g)
    thr = torch.rand(300, generator=g) * 0.9
    for norm in ("minmax", "median"):
        assert torch.equal(boxes_from_maps(maps.cuda(), thr.cuda(), 1, norm).cpu(), boxes_from_maps(maps, thr, 1, norm))
