"""The error `analysis` raises for bad input (no such sweep, nothing finished, a store it cannot open)."""


class ReportError(Exception):
    """A report cannot be made; the message names the sweep, store or option and says what would work.

    Scripts print it as one line and exit 2.
    """
