"""`python -m bench.scu_race`: how many C-STORE responses pynetdicom's requestor loses on a busy CPU, with and
without node.scu.send_c_store (RELIABILITY.md).

8 threads each open 10 associations of 50 C-STOREs to a pynetdicom SCP that answers 0xA700 at once, while one
more thread keeps the CPU busy.  A store without a status lost its response (DIMSE timeout, 5 s here) or its
association (aborted after such a timeout).
"""

from __future__ import annotations

import argparse
import threading
import time
from pathlib import Path

from pydicom.data import get_testdata_file
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from node.scu import send_c_store

SENDERS, ASSOCIATIONS, STORES = 8, 10, 50


def run(fixed: bool) -> tuple[int, float]:
    """(stores without a status, seconds) for SENDERS x ASSOCIATIONS x STORES stores."""
    scp = AE("SCP")
    scp.supported_contexts = AllStoragePresentationContexts
    server = scp.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, lambda _: 0xA700)])
    path = Path(get_testdata_file("CT_small.dcm", download=False))
    lost, done = [0], threading.Event()

    def busy() -> None:
        count = 0
        while not done.is_set():
            count += 1

    def sender() -> None:
        ae = AE("SCU")
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = 5
        ae.add_requested_context(CTImageStorage)
        for _ in range(ASSOCIATIONS):
            association = ae.associate("127.0.0.1", server.server_address[1])
            for _ in range(STORES):
                if not association.is_established:  # aborted after a lost response: the rest is lost too
                    lost[0] += 1
                    continue
                response = send_c_store(association, path) if fixed else association.send_c_store(path)
                lost[0] += "Status" not in response
            if association.is_established:
                association.release()

    threading.Thread(target=busy, daemon=True).start()
    started = time.monotonic()
    threads = [threading.Thread(target=sender) for _ in range(SENDERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    done.set()
    server.shutdown()
    return lost[0], time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plain", action="store_true", help="pynetdicom's send_c_store as it is (no wait)")
    fixed = not parser.parse_args().plain
    lost, seconds = run(fixed)
    total = SENDERS * ASSOCIATIONS * STORES
    print(f"{'node.scu.send_c_store' if fixed else 'Association.send_c_store'}: {lost} of {total} C-STOREs without "
          f"a status, {seconds:.0f} s")


if __name__ == "__main__":
    main()
