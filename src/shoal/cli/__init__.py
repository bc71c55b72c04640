"""Argument parsing and rendering only; the work happens in control/, agent/ and lab/."""
