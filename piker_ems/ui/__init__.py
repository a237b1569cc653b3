"""Qt order mode UI: chart, order lines and the status bar (runs with trio in Qt guest mode)."""
