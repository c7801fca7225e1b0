"""matplotlib (Agg) figure helpers shared by the evaluation report and its driving-metrics section."""
from __future__ import annotations

from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def new_figure(width=5.0, height=3.6):
    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, path: Path) -> Path:
    # bbox_inches="tight" grows the canvas to hold the legends placed below the axes
    fig.savefig(path, bbox_inches="tight")
    return path


def legend_below(ax, ncol: int = 1) -> None:
    """The axes' legend under the x-axis label, outside the data."""
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=ncol, fontsize=7, frameon=False)
