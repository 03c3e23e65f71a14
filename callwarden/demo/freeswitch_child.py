"""``python -m callwarden.demo.freeswitch_child --config FILE --clock-file FILE``: the demo's
FreeSWITCH adapter process. It is the production ``FreeswitchService`` (the same one
``callwarden serve`` runs), with two things only a demo needs: an ephemeral outbound port,
reported on stdout as ``READY <port>``, and a clock the demo sets per call (the time written
in ``--clock-file``), so that quiet hours are shown whatever time it is.

``callwarden.esl.process`` must be the first import: it monkey-patches the standard library.
"""

from callwarden.esl import process  # isort: skip  (gevent monkey-patching comes first)

import argparse  # noqa: E402
import datetime as dt  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402


class FileClock:
    """The instant written in a file (ISO 8601 with an offset), read at each decision."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __call__(self) -> dt.datetime:
        return dt.datetime.fromisoformat(self.path.read_text(encoding="utf-8").strip())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m callwarden.demo.freeswitch_child")
    parser.add_argument("--config", required=True)
    parser.add_argument("--clock-file", required=True, type=Path)
    args = parser.parse_args(argv)
    if not process.patched():
        print("error: gevent did not patch this process", file=sys.stderr)
        return 1
    from callwarden import log as cwlog
    from callwarden.config import load_settings
    from callwarden.esl.service import FreeswitchService

    settings = load_settings(args.config)
    cwlog.configure(settings.logging.format, settings.logging.level)
    service = FreeswitchService(settings, clock=FileClock(args.clock_file), outbound_port=0)
    port = service.start()
    print(f"READY {port}", flush=True)
    return process.wait_for_signal(service.stop, cwlog.get_logger("callwarden.demo"))


if __name__ == "__main__":
    sys.exit(main())
