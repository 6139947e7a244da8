"""Widgets of the TUI: the screen bar, the loss plot, the stage list, modal pickers, the arena's chat pane."""
