"""Report charts as inline SVG (matplotlib, Agg backend; text kept as text so CJK renders)."""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first
from matplotlib import font_manager  # noqa: E402

_CJK_FONTS = ("Noto Sans CJK SC", "Noto Sans CJK JP", "WenQuanYi Zen Hei", "Source Han Sans SC", "SimHei")


def _families() -> list[str]:
    """Installed CJK fonts first (for layout; the SVG keeps text as text for the browser)."""
    installed = {f.name for f in font_manager.fontManager.ttflist}
    return [f for f in _CJK_FONTS if f in installed] + ["DejaVu Sans"]


_STYLE = {
    "svg.fonttype": "none",
    "svg.hashsalt": "callwarden",  # deterministic ids: the same figures give the same SVG
    "font.family": _families(),
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
}
COLORS = {"allowed": "#2e7d32", "denied": "#c62828", "observe": "#ef6c00", "answered": "#1565c0",
          "bar": "#455a64"}


def _svg(fig: Any) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    text = buf.getvalue()
    text = text[text.index("<svg"):]  # drop the XML prolog and doctype: inline in HTML
    return re.sub(r'<svg([^>]*?) width="[^"]*" height="[^"]*"', r'<svg\1 width="100%"', text, count=1)


def daily_volume(dates: Sequence[str], allowed: Sequence[int], denied: Sequence[int],
                 observe: Sequence[int], answered: Sequence[int]) -> str:
    """Stacked bars of outbound attempts per day, with answered calls as a line."""
    with plt.rc_context(_STYLE):
        fig, ax = plt.subplots(figsize=(8, 2.8))
        x = range(len(dates))
        ax.bar(x, allowed, color=COLORS["allowed"], label="allowed 放行")
        ax.bar(x, denied, bottom=allowed, color=COLORS["denied"], label="denied 拦截")
        ax.bar(x, observe, bottom=[a + d for a, d in zip(allowed, denied, strict=True)],
               color=COLORS["observe"], label="observe: would deny 观察放行")
        ax.plot(list(x), answered, color=COLORS["answered"], marker=".", linewidth=1, label="answered 接通")
        step = max(1, len(dates) // 10)
        ax.set_xticks(list(x)[::step], [d[5:] for d in dates][::step])
        ax.set_ylabel("calls")
        ax.yaxis.get_major_locator().set_params(integer=True)
        ax.legend(loc="lower left", bbox_to_anchor=(0, 1.0), fontsize=7, frameon=False, ncols=4)
        return _svg(fig)


def hbar(labels: Sequence[str], values: Sequence[float], *, percent: bool = False, color: str | None = None) -> str:
    """Horizontal bars, largest first, each labelled with its value."""
    with plt.rc_context(_STYLE):
        fig, ax = plt.subplots(figsize=(8, 0.35 * max(len(labels), 2) + 0.6))
        y = range(len(labels))
        ax.barh(list(y), values, color=color or COLORS["bar"])
        ax.set_yticks(list(y), labels)
        ax.invert_yaxis()
        for i, v in enumerate(values):
            ax.text(v, i, f" {v:.1%}" if percent else f" {v:g}", va="center", fontsize=8)
        if percent:
            ax.set_xlim(0, 1.12)
            ax.xaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
        else:
            ax.set_xlim(0, max(values or [1]) * 1.15 or 1)
            ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(axis="y", visible=False)
        return _svg(fig)
