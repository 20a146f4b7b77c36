"""The results tables: rows in order, and the localisation columns only where a row has them."""

from rich.console import Console

from tissueseg.methods.registry import results_table


def scores(miou: float, localisation: dict | None = None) -> dict:
    out = {"miou": miou, "fwiou": miou, "iou": {"a": miou}}
    if localisation is not None:
        out["localisation"] = localisation
    return out


def rendered(table) -> str:
    console = Console(width=200, record=True)
    console.print(table)
    return console.export_text()


def test_wsss_table_shows_localisation_only_when_scored():
    plain = rendered(results_table({"cam": {"test": scores(0.25)}, "mlps": {"test": scores(0.5)}}, "wsss", ["a"]))
    assert "loc. fg IoU" not in plain
    assert plain.index("CAM baseline") < plain.index("MLPS")
    with_loc = rendered(results_table({"cam": {"test": scores(0.25, {"foreground_iou": 0.8, "background_iou": 0.4,
                                                                     "miou": 0.6})},
                                       "mlps": {"test": scores(0.5)}}, "wsss", ["a"]))
    assert "loc. fg IoU" in with_loc and "loc. mIoU" in with_loc
    cam_line = next(line for line in with_loc.splitlines() if "CAM baseline" in line)
    assert "80.0" in cam_line and "60.0" in cam_line
    mlps_line = next(line for line in with_loc.splitlines() if "MLPS" in line)
    assert mlps_line.count("-") >= 2  # no localisation score for this row
