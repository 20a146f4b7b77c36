"""Command line: `tissueseg demo | data | wsss | semi | predict | version`."""

from __future__ import annotations

import tissueseg
from tissueseg.cli.common import App, console
from tissueseg.cli.data import data_app
from tissueseg.cli.demo import demo, demo_slides  # noqa: F401  (demo_slides: used by tests)
from tissueseg.cli.predict import predict
from tissueseg.cli.semi import semi_app
from tissueseg.cli.wsss import wsss_app

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
