"""The live loss plot: training loss and eval loss per step (textual-plotext), one series pair per stage."""

from __future__ import annotations

from textual_plotext import PlotextPlot


class LossPlot(PlotextPlot):
    """Redrawn from the whole series each time (cheap at these sizes); ``points`` counts what it holds."""

    DEFAULT_CSS = """
    LossPlot {
        height: 1fr;
        min-height: 8;
    }
    """

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.loss: dict[str, list[tuple[int, float]]] = {}
        self.eval_loss: dict[str, list[tuple[int, float]]] = {}

    @property
    def points(self) -> int:
        return sum(len(v) for v in self.loss.values()) + sum(len(v) for v in self.eval_loss.values())

    def set_data(self, loss: dict[str, list[tuple[int, float]]], eval_loss: dict[str, list[tuple[int, float]]]) -> None:
        self.loss = {k: list(v) for k, v in loss.items()}
        self.eval_loss = {k: list(v) for k, v in eval_loss.items()}
        self.replot()

    def on_mount(self) -> None:
        super().on_mount()
        self.replot()

    def replot(self) -> None:
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        plt.title("loss per step (train line, eval dots)" if self.points else "loss: no points yet")
        plt.xlabel("step")
        markers = {"sft": "braille", "dpo": "braille"}
        for stage, pts in self.loss.items():
            if pts:
                plt.plot([s for s, _ in pts], [v for _, v in pts], marker=markers.get(stage, "braille"),
                         label=f"{stage} train")
        for stage, pts in self.eval_loss.items():
            if pts:
                plt.scatter([s for s, _ in pts], [v for _, v in pts], marker="dot", label=f"{stage} eval")
        self.refresh()
