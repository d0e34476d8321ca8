"""`kiln report RUN`: one self-contained HTML page per run (config, data, curves, confusion
matrix, parity, benchmark, the commands to ship it), readable without a network."""

from kiln.report.page import REPORT_FILE, SECTION_IDS, render_report, write_report

__all__ = ["REPORT_FILE", "SECTION_IDS", "render_report", "write_report"]
