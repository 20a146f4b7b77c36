"""The non-timed logic of benchmarks/peer_tiatoolbox.py: class-map agreement, mask upsampling, the network."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from peer_tiatoolbox import NO_TISSUE, PROTOTYPES, ColourLRASPP, agreement_counts, upsample_mask  # noqa: E402


def test_agreement_counts_only_tissue_that_tissueseg_analysed():
    ours = np.array([[0, 1, 2, NO_TISSUE]], np.uint8)
    theirs = np.array([[0, 2, 2, 0]], np.uint8)
    assert agreement_counts(ours, theirs, np.ones((1, 4), bool)) == (2, 3)  # not-analysed pixel left out
    assert agreement_counts(ours, theirs, np.array([[True, False, False, True]])) == (1, 1)


def test_upsample_mask_rows_match_the_full_resolution_nearest_resize():
    mask = np.array([[1, 0], [0, 1]], bool)
    full = upsample_mask(mask, (4, 6), 0, 4)
    assert full.shape == (4, 6)
    assert full[:2, :3].all() and not full[:2, 3:].any() and full[2:, 3:].all() and not full[2:, :3].any()
    assert (upsample_mask(mask, (4, 6), 1, 3) == full[1:3]).all()  # a band is the same rows of the whole


def test_colour_head_follows_the_stain():
    torch.manual_seed(0)
    net = ColourLRASPP().eval()
    x = torch.zeros(len(PROTOTYPES), 3, 64, 64)
    for i, colour in enumerate(PROTOTYPES):
        x[i] = torch.tensor(colour, dtype=torch.float32)[:, None, None] / 255
    with torch.inference_mode():
        p = net(x)
    assert p.shape == (len(PROTOTYPES), len(PROTOTYPES), 64, 64)
    assert torch.allclose(p.sum(1), torch.ones(1), atol=1e-5)
    assert (p.argmax(1) == torch.arange(len(PROTOTYPES))[:, None, None]).float().mean() > 0.99
