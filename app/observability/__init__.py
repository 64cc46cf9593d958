"""Logs, traces and error reports; everything that leaves the process passes one scrubber."""
