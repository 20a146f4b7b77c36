"""The Python half of ``gpu_suite.sh``: run rows in this one process (``--smoke``), and print the suite's table.

    python benchmarks/suite_rows.py run WORK NAME BUDGET "SCRIPT ARGS..." [NAME BUDGET "..."]...
    python benchmarks/suite_rows.py table WORK NAME...

``run`` executes each benchmark script as ``__main__`` in this process, so torch and the package are
imported once for every row (what keeps the CPU smoke short); a row gets ``BUDGET`` seconds
(SIGALRM). Either way each row leaves ``WORK/NAME.out`` (its stdout), ``.err``, ``.rc`` (exit status,
124 when over budget) and ``.ms`` (wall milliseconds). ``table`` turns every markdown data line of the
rows' outputs into one table, each cell named by its own table's header.
"""

from __future__ import annotations

import contextlib
import runpy
import shlex
import signal
import sys
import time
import traceback
from pathlib import Path

GOALS = {"mlps": "bf16 + channels_last (+ compile) vs fp32 eager",
         "plimseg": "vs MLPS stage 1",
         "semi": "bf16 vs fp32",
         "overhead": "engine ≥ 90 % of bare; MLPS stage 1: official 215.5 img/s (one H100), goal ≥ 650",
         "slide": "end to end ≥ 70 % of model only",
         "ddp": "engine img/s over every rank"}


class OverBudget(Exception):
    """A row ran past its budget."""


def _alarm(signum, frame) -> None:
    raise OverBudget


def run_row(work: Path, name: str, budget: int, command: str) -> None:
    """``command`` (a benchmark script and its arguments) as ``__main__``, with its output in ``work``."""
    script, *argv = shlex.split(command)
    rc = 0
    start = time.perf_counter()
    with open(work / f"{name}.out", "w") as out, open(work / f"{name}.err", "w") as err, \
            contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        sys.argv = [script, *argv]
        signal.signal(signal.SIGALRM, _alarm)
        signal.alarm(budget)
        try:
            runpy.run_path(script, run_name="__main__")
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except OverBudget:
            rc = 124
        except Exception:  # the row failed: its traceback goes to its .err, the others still run
            traceback.print_exc()
            rc = 1
        finally:
            signal.alarm(0)
    (work / f"{name}.rc").write_text(f"{rc}\n")
    (work / f"{name}.ms").write_text(f"{round(1000 * (time.perf_counter() - start))}\n")


def table(work: Path, names: list[str]) -> str:
    """One markdown table of every row's results, with its goal, seconds and status."""
    outputs = {n: (work / f"{n}.out").read_text().splitlines() for n in names}
    device = next((line for lines in outputs.values() for line in lines if line.startswith("device: ")),
                  "device: unknown")
    lines = [device.split(";")[0].split(",")[0], "", "| row | measurement | result | goal | s | status |",
             "|---|---|---|---|---|---|"]
    for n in names:
        rc = int((work / f"{n}.rc").read_text())
        status = "ok" if rc == 0 else ("over budget" if rc in (124, 137) else f"failed (rc {rc})")
        out = outputs[n]
        note = next((line for line in out if line.startswith("skipped")), None)
        status = "skipped" if note else status
        seconds = f"{int((work / f'{n}.ms').read_text()) / 1000:.0f}"
        found = False
        for i, line in enumerate(out):
            if not (line.startswith("|") and i + 1 < len(out) and out[i + 1].startswith("|---")):
                continue
            header = [c.strip() for c in line.strip("|").split("|")]
            for data in out[i + 2:]:
                if not data.startswith("|"):
                    break
                cells = [c.strip() for c in data.strip("|").split("|")]
                result = "; ".join(f"{h} {c}" for h, c in zip(header[1:], cells[1:]) if c not in ("", "-"))
                lines.append(f"| {n} | {cells[0]} | {result} | {GOALS[n]} | {seconds} | {status} |")
                found = True
        if not found:
            lines.append(f"| {n} | - | {note or 'no result'} | {GOALS[n]} | {seconds} | {status} |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    mode, work, *rest = argv
    work = Path(work)
    if mode == "run":
        sys.path.insert(0, str(Path(__file__).resolve().parent))  # the scripts import their neighbours
        for i in range(0, len(rest), 3):
            run_row(work, rest[i], int(rest[i + 1]), rest[i + 2])
        return 0
    print(table(work, rest))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
