"""Runs the real FreeSWITCH adapter in a child process for the tests and the benchmark.

``python -m tests.esl.harness --config FILE [--at ISO] [--fast-listener] [--hub-probe]``. It is
the production ``FreeswitchService`` with two things a test needs and production must not have: a
fixed clock (decisions depend on the time of day) and an ephemeral outbound port, reported on
stdout as ``READY <port>``. gevent patches this process only; the pytest process stays unpatched.
"""

from callwarden.esl import process  # isort: skip  (gevent monkey-patching comes first)

import argparse  # noqa: E402
import datetime as dt  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402

import gevent  # noqa: E402
from gevent.util import format_run_info  # noqa: E402

from callwarden import log as cwlog  # noqa: E402
from callwarden.config import load_settings  # noqa: E402
from callwarden.esl.hub_probe import HubProbe, report_on_signal  # noqa: E402
from callwarden.esl.inbound import ListenerTuning  # noqa: E402
from callwarden.esl.service import FreeswitchService  # noqa: E402


def _dump_greenlets() -> None:
    print("\n".join(format_run_info()), file=sys.stderr, flush=True)


def _start_detector(settings, clock) -> None:  # type: ignore[no-untyped-def]
    import threading  # unpatched in this process: a native thread, like the policing thread

    from callwarden.policing.runner import Detector

    detector = Detector(settings)
    log = cwlog.get_logger("callwarden.esl")

    def passes() -> None:
        while True:
            try:
                result = detector.run_pass(now=clock() if clock else None)
                log.info("harness_detector_pass", raised=len(result.raised),
                         duration_ms=round(result.duration_s * 1000, 1))
            except Exception as exc:
                log.error("harness_detector_pass_failed", error=type(exc).__name__)
            threading.Event().wait(0.1)

    threading.Thread(target=passes, name="harness-detector", daemon=True).start()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True)
    parser.add_argument("--at", help="fixed clock for every decision (ISO 8601 with offset)")
    parser.add_argument("--fast-listener", action="store_true",
                        help="short reconnect backoff and idle probe, for reconnection tests")
    parser.add_argument("--hub-probe", action="store_true",
                        help="measure how late the hub wakes; SIGUSR2 logs esl_hub_probe (the "
                             "figures since the previous SIGUSR2)")
    parser.add_argument("--detector-thread", action="store_true",
                        help="seat-rental detector passes back to back (at --at) in a native "
                             "thread of this process, as a FreeSWITCH-only `callwarden serve` "
                             "runs the detector: it shares the GIL with the hub")
    args = parser.parse_args()
    if not process.patched():
        print("harness: gevent did not patch this process", file=sys.stderr)
        return 1
    settings = load_settings(args.config)
    cwlog.configure(settings.logging.format, settings.logging.level)
    kwargs = {}
    if args.at:
        fixed = dt.datetime.fromisoformat(args.at)
        kwargs["clock"] = lambda: fixed
    if args.fast_listener:
        kwargs["listener_tuning"] = ListenerTuning(backoff_initial_s=0.05, backoff_max_s=0.2,
                                                   idle_probe_s=2.0, store_timeout_s=5.0)
    gevent.signal_handler(signal.SIGUSR1, _dump_greenlets)  # debugging a stuck test
    service = FreeswitchService(settings, outbound_port=0, **kwargs)
    port = service.start()
    if args.hub_probe:
        report_on_signal(HubProbe().start().watch_store(), signal.SIGUSR2)
    if args.detector_thread:
        _start_detector(settings, kwargs.get("clock"))
    print(f"READY {port}", flush=True)
    return process.wait_for_signal(service.stop, cwlog.get_logger("callwarden.esl"))


if __name__ == "__main__":
    sys.exit(main())
