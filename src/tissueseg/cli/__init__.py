"""Command line: `tissueseg demo | data | wsss | semi | predict | version`."""

from __future__ import annotations

import os

# Idle OpenMP threads sleep instead of spinning (set before torch loads its OpenMP runtime). On a shared
# 2-core machine spinning threads made EfficientNet training steps ~5× slower (BENCHMARKS.md, session 4);
# an explicit OMP_WAIT_POLICY in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import tissueseg  # noqa: E402
from tissueseg.cli.common import App, console  # noqa: E402
from tissueseg.cli.data import data_app  # noqa: E402
from tissueseg.cli.demo import demo, demo_slides  # noqa: E402, F401  (demo_slides: used by tests)
from tissueseg.cli.predict import predict  # noqa: E402
from tissueseg.cli.semi import semi_app  # noqa: E402
from tissueseg.cli.wsss import wsss_app  # noqa: E402

app = App(help="tissueseg: pixel-accurate H&E tissue maps from cheap labels.", no_args_is_help=True,
          add_completion=False)
app.add_typer(data_app, name="data")
app.add_typer(wsss_app, name="wsss")
app.add_typer(semi_app, name="semi")
app.command("predict")(predict)


@app.command()
def version() -> None:
    """Print the tissueseg version."""
    console.print(f"tissueseg {tissueseg.__version__}")


app.command("demo")(demo)
