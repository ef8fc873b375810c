import pytest
import torch

from fashionsearchnet.data import hide_patches
from fashionsearchnet.train import load_config


def hide_loop(x: torch.Tensor, hide: torch.Tensor) -> torch.Tensor:
    """Naive Hide-and-Seek: pixel (i, j) of image b is zeroed when its patch is hidden; patch
    boundaries at floor(k · S / grid), the last patch taking the remainder."""
    b, c, h, w = x.shape
    grid = hide.shape[1]
    out = x.clone()
    for n in range(b):
        for i in range(h):
            for j in range(w):
                if hide[n, i * grid // h, j * grid // w]:
                    out[n, :, i, j] = 0.0
    return out


@pytest.mark.parametrize("size,grid,prob", [(16, 4, 0.5), (13, 4, 0.3), (10, 3, 0.9), (8, 8, 0.5)])
def test_hide_patches_against_a_loop(size, grid, prob):
    x = torch.randn(5, 3, size, size)
    got = hide_patches(x, torch.Generator().manual_seed(3), grid, prob)
    hide = torch.rand(5, grid, grid, generator=torch.Generator().manual_seed(3)) < prob  # the same draw
    torch.testing.assert_close(got, hide_loop(x, hide))
    # every patch is either untouched or all zero
    assert ((got == x) | (got == 0)).all()


def test_hide_patches_hides_about_prob_of_the_patches():
    x = torch.ones(200, 1, 32, 32)
    got = hide_patches(x, torch.Generator().manual_seed(0), 8, 0.5)
    share = (got == 0).float().mean().item()
    assert 0.45 < share < 0.55
    assert torch.equal(hide_patches(x, torch.Generator().manual_seed(0), 8, 0.0), x)


def test_hide_options_are_checked():
    cfg = load_config("synthetic", ["hide_grid=4", "hide_prob=0.25"])
    assert (cfg.hide_grid, cfg.hide_prob) == (4, 0.25)
    for bad in (["hide_grid=-1"], ["hide_prob=1.0"], ["hide_prob=-0.1"]):
        with pytest.raises(ValueError, match="hide_grid must be ≥ 0 and hide_prob in"):
            load_config("synthetic", bad).validate()
