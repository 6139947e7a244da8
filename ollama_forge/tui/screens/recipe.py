"""Recipe: a form over every recipe key (generated from the dataclasses in recipe.py), validated as you type.

Each field is checked alone with the recipe's own coercion (``runlist.check_value``), and the whole recipe with
``recipe.from_dict`` (types, then contradictions); the first problem is shown on top and under its field. The base
model comes from the local HF cache or a directory (ctrl+b), the data file from a browser with the `data check`
report and the first records (ctrl+f; the same preview shows under data.train). ctrl+s saves the YAML atomically,
ctrl+o loads one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import Checkbox, Footer, Input, Label, Select, Static

from . import ForgeScreen


def slug(key: str) -> str:
    return "f-" + key.replace(".", "-")


class RecipeScreen(ForgeScreen):
    MODE = "recipe"
    SUMMARY = "every recipe key, validated as you type; save/open YAML"
    BINDINGS = [
        Binding("ctrl+s", "save", "Save"),
        Binding("ctrl+o", "load", "Open"),
        Binding("ctrl+b", "pick_base", "Base model"),
        Binding("ctrl+f", "pick_data", "Data file"),
        Binding("ctrl+n", "new", "New", show=False),
        Binding("escape", "leave_field", "Leave field", show=False),
    ]
    PALETTE = [("Save recipe", "write the recipe YAML (atomic)", "save"),
               ("Open recipe", "load a recipe YAML into the form", "load"),
               ("Pick base model", "from the local HF cache or a directory", "pick_base"),
               ("Pick data file", "browse, with the data check report and first records", "pick_data"),
               ("New recipe", "reset the form to the defaults", "new")]

    def __init__(self) -> None:
        super().__init__()
        from ...runlist import recipe_fields, recipe_sections

        self.fields = recipe_fields()
        self.by_key = {f.key: f for f in self.fields}
        self.by_slug = {slug(f.key): f for f in self.fields}
        self.sections = recipe_sections()
        self.loaded_version = -1
        self.valid = False
        self._filling = False
        self._known: dict[str, str] = {}
        self._errors: dict[str, str | None] = {}
        self._preview_for: str | None = None

    # --- layout ---
    def compose(self) -> ComposeResult:
        from ... import recipe as recipes
        from ...runlist import form_values

        values = form_values(recipes.Recipe())
        yield from self.nav()
        yield Static("", id="recipe-status")
        with VerticalScroll(id="form"):
            for section, help_ in self.sections:
                title = Text.assemble((section or "recipe", "bold"), ("  " + help_, "dim"))
                yield Static(title, classes="section-title")
                if section == "dpo":
                    yield Checkbox("DPO round after SFT (uses dpo.data)", False, id="dpo-on", compact=True)
                for spec in (f for f in self.fields if f.section == section):
                    with Horizontal(classes="field-line", id=f"line-{slug(spec.key)}"):
                        yield Label(spec.key, classes="field-key")
                        yield self._widget(spec, values[spec.key])
                    # the field's error line is mounted under it the first time it has one (fewer widgets)
                    if spec.key == "data.train":
                        yield Static("", id="data-preview", classes="detail")
        yield Static("", id="field-help")
        yield Footer()

    def _widget(self, spec: Any, text: str) -> Any:
        if spec.kind in ("choice", "bool"):
            options = [(c, c) for c in (spec.choices if spec.kind == "choice" else ("true", "false"))]
            return Select(options, value=text if text else Select.NULL, allow_blank=spec.optional,
                          prompt="(auto)", compact=True, id=slug(spec.key))
        placeholder = {"list": "(none: a, b or [a, b])", "dict": "(none: {key: value})"}.get(
            spec.kind, "(none)" if spec.optional else "")
        return Input(text, placeholder=placeholder, compact=True, id=slug(spec.key), select_on_focus=False)

    def on_mount(self) -> None:
        self.query_one("#field-help", Static).update("tab moves between fields; the focused field's help shows here")
        self.load_from_app()

    def on_screen_resume(self) -> None:
        super().on_screen_resume()
        if self.is_mounted:
            self.load_from_app()

    def load_from_app(self) -> None:
        if self.loaded_version == self.app.recipe_version:
            return
        from ... import recipe as recipes

        self.loaded_version = self.app.recipe_version
        self.fill(self.app.recipe if self.app.recipe is not None else recipes.Recipe())
        if self.app.recipe_error:
            self.set_status(False, self.app.recipe_error)
            self.app.recipe_error = None

    # --- values ---
    def fill(self, recipe: Any) -> None:
        from ...runlist import form_values

        values = form_values(recipe)
        self._known = dict(values)
        self._filling = True
        try:
            for spec in self.fields:
                w = self.query_one(f"#{slug(spec.key)}")
                text = values[spec.key]
                if isinstance(w, Select):
                    w.value = text if text else Select.NULL
                else:
                    w.value = text
                self.show_field_error(spec.key, None)
            self.query_one("#dpo-on", Checkbox).value = recipe.dpo is not None
            self._known["dpo-on"] = str(recipe.dpo is not None)
        finally:
            self._filling = False
        self.validate_all()
        self.preview_data()

    def values(self) -> dict[str, str]:
        out = {}
        for spec in self.fields:
            w = self.query_one(f"#{slug(spec.key)}")
            if isinstance(w, Select):
                out[spec.key] = "" if w.value is Select.NULL else str(w.value)
            else:
                out[spec.key] = w.value
        return out

    def set_value(self, key: str, text: str) -> None:
        w = self.query_one(f"#{slug(key)}")
        w.value = text
        self._known[key] = text
        self.validate_all(user=True)

    # --- validation ---
    def show_field_error(self, key: str, message: str | None) -> None:
        if self._errors.get(key, None) == message:
            return
        self._errors[key] = message
        found = self.query(f"#err-{slug(key)}")
        if not found:
            if not message:
                return
            err = Static("", id=f"err-{slug(key)}", classes="field-error")
            self.query_one("#form").mount(err, after=self.query_one(f"#line-{slug(key)}"))
        else:
            err = found.first(Static)
        err.update(Text(f"✗ {message}") if message else "")
        err.set_class(bool(message), "-shown")

    def set_status(self, ok: bool, message: str) -> None:
        where = self.app.display_path(self.app.recipe_path) if self.app.recipe_path else "(not saved)"
        status = self.query_one("#recipe-status", Static)
        if ok:
            status.update(Text.assemble(("recipe ", "dim"), (where, "bold"), ("  ✓ valid", "green")))
        else:
            status.update(Text.assemble(("recipe ", "dim"), (where, "bold"), ("  ✗ " + message, "bold red")))

    def validate_all(self, user: bool = False) -> bool:
        """Check every field alone, then the recipe as a whole; returns whether it is valid."""
        from ...errors import ForgeError
        from ...runlist import check_value, error_field, recipe_from_form

        values = self.values()
        dpo = self.query_one("#dpo-on", Checkbox).value
        first = None
        for spec in self.fields:
            if spec.section == "dpo" and not dpo:
                self.show_field_error(spec.key, None)
                continue
            problem = check_value(spec, values[spec.key])
            self.show_field_error(spec.key, problem)
            first = first or problem
        if first:
            self.valid = False
            self.set_status(False, first)
            return False
        try:
            recipe = recipe_from_form(values, dpo)
        except ForgeError as e:
            msg = e.one_line().removeprefix("recipe: ")
            key = error_field(msg, self.by_key)
            if key:
                self.show_field_error(key, msg)
            self.valid = False
            self.set_status(False, msg)
            return False
        self.valid = True
        self.app.recipe = recipe  # what Train uses (saved or not); the form's version stays
        if user:
            self.app.use_recipe = True
        self.set_status(True, "")
        return True

    @on(Input.Changed)
    @on(Select.Changed)
    def changed(self, event: Any) -> None:
        spec = self.by_slug.get(event.control.id or "")
        if spec is None:
            return
        value = event.value
        text = "" if value is Select.NULL else str(value)
        if self._known.get(spec.key) == text:  # the echo of fill(), not an edit
            return
        self._known[spec.key] = text
        self.validate_all(user=True)
        if spec.key == "data.train":
            self.preview_data()

    @on(Checkbox.Changed, "#dpo-on")
    def dpo_toggled(self, event: Checkbox.Changed) -> None:
        if self._known.get("dpo-on") == str(event.value):
            return
        self._known["dpo-on"] = str(event.value)
        self.validate_all(user=True)

    def on_descendant_focus(self, event: Any) -> None:
        spec = self.by_slug.get(getattr(event.widget, "id", None) or "")
        if spec is None:
            return
        default = spec.default if spec.default not in (None, "", [], {}) else "none"
        self.query_one("#field-help", Static).update(
            Text.assemble((spec.key, "bold"), (f" (default {default}): ", "dim"), spec.help))

    # --- data preview ---
    def preview_data(self) -> None:
        from ...errors import ForgeError
        from ...runlist import parse_value

        try:
            paths = parse_value(self.by_key["data.train"], self.values()["data.train"])
        except ForgeError:
            paths = []
        box = self.query_one("#data-preview", Static)
        if not paths:
            box.update(Text("no training data yet: ctrl+f picks a file", style="dim"))
            self._preview_for = None
            return
        key = "\n".join(paths)
        if key == self._preview_for:
            return
        self._preview_for = key
        box.update(Text(f"checking {', '.join(paths)}…", style="dim"))
        self.run_preview(paths, self.values().get("data.format") or "auto")

    @work(thread=True, exclusive=True, group="preview")
    def run_preview(self, paths: list[str], fmt: str) -> None:
        from ...runlist import data_preview
        from ..widgets.dialogs import preview_text

        p = data_preview(paths, n=3, fmt=fmt)
        self.app.call_from_thread(self.query_one("#data-preview", Static).update, preview_text(p))

    # --- actions ---
    def action_leave_field(self) -> None:
        self.set_focus(None)

    def action_new(self) -> None:
        self.app.set_recipe(None, None)
        self.load_from_app()

    def action_save(self) -> None:
        if not self.validate_all():
            self.notify("fix the recipe first: " + str(self.query_one("#recipe-status", Static).content),
                        severity="error")
            return
        if self.app.recipe_path is not None:
            self.save_to(str(self.app.recipe_path))
            return
        from ..widgets.dialogs import PathDialog

        self.app.push_screen(PathDialog("Save recipe as (YAML)", "recipe.yaml"),
                             lambda path: self.save_to(path) if path else None)

    def save_to(self, path: str) -> None:
        from ...runlist import save_recipe

        recipe = self.app.recipe
        out = save_recipe(recipe, Path(path).expanduser())
        self.app.recipe_path = out
        self.set_status(True, "")
        self.notify(f"saved {self.app.display_path(out)}")

    def action_load(self) -> None:
        from ..widgets.dialogs import PathDialog

        default = str(self.app.display_path(self.app.recipe_path)) if self.app.recipe_path else ""
        self.app.push_screen(PathDialog("Open recipe (YAML)", default, must_exist=True), self.load_path)

    def load_path(self, path: str | None) -> None:
        if not path:
            return
        from ... import recipe as recipes
        from ...errors import ForgeError

        try:
            recipe = recipes.load(Path(path).expanduser())
        except ForgeError as e:
            self.set_status(False, e.one_line())
            self.notify(e.one_line(), severity="error")
            return
        self.app.set_recipe(recipe, Path(path).expanduser())
        self.load_from_app()
        self.notify(f"loaded {path}")

    def action_pick_base(self) -> None:
        from ..widgets.dialogs import BaseModelDialog

        self.app.push_screen(BaseModelDialog("."), lambda v: self.set_value("base_model", v) if v else None)

    def action_pick_data(self) -> None:
        from ..widgets.dialogs import DataFileDialog

        def use(path: str | None) -> None:
            if path:
                self.set_value("data.train", self.app.display_path(path))
                self.preview_data()

        self.app.push_screen(DataFileDialog("."), use)
