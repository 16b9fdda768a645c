"""`python -m bickd.models.torchvision_weights` turns torchvision's ImageNet weights into a teacher checkpoint."""
from __future__ import annotations

import os
import subprocess
import sys

import torch
from torchvision import models

from bickd.models import create_model, load_checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_torchvision_weights_become_a_checkpoint_our_model_loads_with_equal_outputs(tmp_path):
    torch.manual_seed(0)
    reference = models.resnet18(weights=None).eval()
    downloaded = tmp_path / "resnet18-f37072fd.pth"   # torchvision's file: a bare state dict
    torch.save(reference.state_dict(), downloaded)
    out = tmp_path / "checkpoints" / "resnet18.pt"
    made = subprocess.run([sys.executable, "-m", "bickd.models.torchvision_weights", "resnet18", str(out), "--from",
                           str(downloaded)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, made.stderr[-2000:]
    ours = load_checkpoint(create_model("resnet18", 1000), out).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(ours(x), reference(x))
    wrong = subprocess.run([sys.executable, "-m", "bickd.models.torchvision_weights", "resnet34", str(tmp_path / "x.pt"),
                            "--from", str(downloaded)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert wrong.returncode == 2 and len(wrong.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x.pt").exists()
