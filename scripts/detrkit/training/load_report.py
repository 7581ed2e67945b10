"""transformers' LOAD REPORT table, held back while a fine-tune swaps the class head.

`from_pretrained(..., ignore_mismatched_sizes=True)` logs a table of the re-initialised class head; the run
already says "new class head for N classes" and `check_loading` turns any other re-initialised weight into an
error. So the table is held during the call and dropped only when it can list nothing but that head; a report
with anything else in it (unexpected keys, say) is logged as transformers wrote it.
"""
from __future__ import annotations

import logging
from contextlib import contextmanager

REPORT_LOGGER = "transformers.modeling_utils"  # the logger modeling_utils passes to log_state_dict_report
REPORT_MARK = "LOAD REPORT"


class _HoldLoadReport(logging.Filter):
    def __init__(self):
        super().__init__()
        self.held: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if REPORT_MARK in str(record.msg):
            self.held.append(record)
            return False
        return True  # every other message passes untouched


@contextmanager
def hold_load_report():
    """Yields `release(only_head: bool)`: call it after the load; the held report is logged unless only_head."""
    logger = logging.getLogger(REPORT_LOGGER)
    hold = _HoldLoadReport()
    logger.addFilter(hold)
    released = False

    def release(only_head: bool) -> None:
        nonlocal released
        logger.removeFilter(hold)
        released = True
        if not only_head:
            for record in hold.held:
                logger.handle(record)

    try:
        yield release
    finally:
        if not released:  # the load failed: show what transformers reported
            release(only_head=False)
