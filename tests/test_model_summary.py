"""Parameter counts of the paper presets, and the command that prints them."""
import subprocess
import sys

import pytest

from conftest import load_config
from scaled_ql.networks import summary as model_summary


@pytest.mark.parametrize("depth,paper", [(34, 31e6), (50, 60e6), (101, 79e6)])
def test_paper_presets_within_ten_percent_of_the_paper(depth, paper):
  config = load_config("configs/pretrain.py", f"paper_resnet{depth}")
  rows = dict(model_summary.summarize(config))
  assert abs(rows["total"] / paper - 1) <= 0.10, rows["total"]
  parts = ("encoder (total)", "spatial_embedding", "projection", "head")
  assert sum(rows[p] for p in parts) == rows["total"]
  assert rows["head"] == 40 * (128 * 18 * 51 + 18 * 51)


def test_model_summary_command(repo):
  out = subprocess.run(
      [sys.executable, "-m", "launch.model_summary",
       "--config=configs/pretrain.py:paper_resnet101"],
      cwd=repo, capture_output=True, text=True, timeout=300, check=True).stdout
  assert "ResNet-101" in out and "total" in out and "this model / paper = 0.95" in out
  bad = subprocess.run(
      [sys.executable, "-m", "launch.model_summary", "--config=configs/pretrain.py:tiny",
       "--config.model.encoder=vit"], cwd=repo, capture_output=True, text=True, timeout=300)
  assert bad.returncode != 0 and "model.encoder='vit'" in bad.stderr
