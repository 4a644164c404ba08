"""`python -m services.dns`: one DNS worker, configured by KGSLB_* variables alone; the
`--workers` supervisor starts these on the sockets it hands over (`workers.py`)."""

from __future__ import annotations

import sys

from services.dns.service import serve
from services.dns.settings import DnsSettings
from shared.runtime import ServiceFailed, run
from shared.settings import SettingsError, load_settings


def main() -> None:
    try:
        settings = load_settings(DnsSettings)
    except SettingsError as exc:
        print(f"kgslb dns worker: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    try:
        run(serve(settings))
    except ServiceFailed:
        raise SystemExit(1) from None  # logged by run_service


if __name__ == "__main__":
    main()
