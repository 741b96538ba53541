"""What later modules plug into the panel: sections (an overview figure, a block on the meter
page, a page of their own) and operator actions.

The coverage pages are the panel's own. Top-ups (远程充值) and tariff checks (电价执行) are
*sections*: the panel shows their slots from the start, "not configured" until a module
registers a provider for them. A module offers ``register(registry)`` in its
``central.<module>.panel`` module (tried at start-up; `[panel] extensions` adds others):

    def register(registry: Registry) -> None:
        registry.provide("topup", TopupSection(...))
        registry.action(Action("topup.retry", {"zh-CN": "重试", "en": "Retry"},
                               handler=retry_order, section="topup"))

Every action is for the operator role only, runs only after the server checked the session,
the role and the CSRF token, and is written to the audit trail (`central.panel.auth.audit`)
before it runs and again with its outcome.

An action on one row of a section's table (e.g. retry *this* order) is ``inline``: the section
page shows no form of its own for it; the provider draws its buttons with the `Forms` the
panel passes to ``page`` / ``meter_block`` when they take a ``forms`` keyword — only for an
operator's session (a viewer gets ``forms=None``: no button).
"""

from __future__ import annotations

import importlib
import inspect
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from html import escape
from typing import Any, Protocol

__all__ = [
    "BUILTIN_EXTENSIONS",
    "Action",
    "ActionContext",
    "ActionResult",
    "Figure",
    "Forms",
    "Registry",
    "Section",
    "SectionProvider",
    "accepts_forms",
]

log = logging.getLogger(__name__)

#: modules tried at start-up; missing ones leave their sections "not configured"
BUILTIN_EXTENSIONS = ("central.topup.panel", "central.tariff.panel")

Text = Mapping[str, str]
"""a label per language: {"zh-CN": ..., "en": ...}"""


@dataclass(frozen=True)
class Figure:
    """An overview figure: a rate (percent) with what it counts, for a day."""

    rate: float | None
    numerator: int
    denominator: int
    target: float | None = None


@dataclass(frozen=True)
class ActionContext:
    user: str
    role: str
    remote: str
    #: the audit row of this action (the handler may add to its detail)
    audit_id: int
    #: the panel's services (`central.panel.app.Services`), for handlers that need the store,
    #: the command sender or the configuration
    services: Any


@dataclass(frozen=True)
class ActionResult:
    ok: bool
    #: what the operator sees, and the audit trail keeps
    summary: str
    #: details shown below the summary (e.g. the values read)
    details: Mapping[str, Any] = field(default_factory=dict)


ActionHandler = Callable[[ActionContext, Mapping[str, str]], Awaitable[ActionResult]]


@dataclass(frozen=True)
class Action:
    name: str
    title: Text
    handler: ActionHandler
    #: the section whose pages show it ("" = the panel's own, e.g. read now on a meter)
    section: str = ""
    #: the form fields it takes (anything else is refused)
    fields: tuple[str, ...] = ()
    role: str = "operator"
    #: drawn by the section's provider on its rows (`Forms`), not as a form of its own
    inline: bool = False


@dataclass(frozen=True)
class Forms:
    """What a provider needs to draw an operator's action buttons: the session's CSRF token
    and the page to come back to. The panel passes it to an operator's pages only; the server
    checks the role and the token again on every POST whatever the page showed."""

    csrf: str
    next: str
    lang: str

    def button(
        self,
        action: str,
        label: str,
        values: Mapping[str, str],
        *,
        note: str | None = None,
        note_required: bool = False,
        element_id: str = "",
    ) -> str:
        """A form posting `values` to the action; `note`: the placeholder of a note field."""
        hidden = "".join(
            f'<input type="hidden" name="{escape(k)}" value="{escape(v)}">'
            for k, v in {"csrf": self.csrf, "next": self.next, **values}.items()
        )
        field_html = ""
        if note is not None:
            required = " required" if note_required else ""
            field_html = (
                f'<input name="note" class="note" placeholder="{escape(note)}"'
                f' maxlength="500"{required}>'
            )
        ident = f' id="{escape(element_id)}"' if element_id else ""
        return (
            f'<form method="post" action="/actions/{escape(action)}" class="action inline"'
            f"{ident}>{hidden}{field_html}"
            f'<button type="submit">{escape(label)}</button></form>'
        )


def accepts_forms(method: Any) -> bool:
    """Whether a provider's method takes the ``forms`` keyword (older providers do not)."""
    try:
        return "forms" in inspect.signature(method).parameters
    except (TypeError, ValueError):
        return False


class SectionProvider(Protocol):
    """What a module gives a section. Each method may return None: nothing to show."""

    async def figure(self, day: str) -> Figure | None:
        """The section's overview figure for a data day (e.g. 远程充值成功率)."""

    async def meter_block(self, concentrator: str, meter: str, lang: str) -> str | None:
        """HTML (already escaped) for the meter page: orders, tariff outcome."""

    async def page(self, lang: str, query: Mapping[str, str]) -> str | None:
        """HTML of the section's own page (/section/<key>), e.g. the needs-review orders."""


@dataclass
class Section:
    key: str
    title: Text
    #: the overview figure's label
    figure_label: Text
    provider: SectionProvider | None = None

    @property
    def configured(self) -> bool:
        return self.provider is not None


@dataclass
class Registry:
    sections: dict[str, Section] = field(default_factory=dict)
    actions: dict[str, Action] = field(default_factory=dict)
    #: what a module's ``register`` may use to build its provider: ``store`` (the central
    #: store) and ``cfg`` (the central configuration) when the panel serves; empty otherwise
    context: dict[str, Any] = field(default_factory=dict)

    def section(self, section: Section) -> None:
        if section.key in self.sections:
            raise ValueError(f"section {section.key!r} registered twice")
        self.sections[section.key] = section

    def provide(self, key: str, provider: SectionProvider) -> None:
        if key not in self.sections:
            raise KeyError(f"no section {key!r}")
        if self.sections[key].provider is not None:
            raise ValueError(f"section {key!r} already has a provider")
        self.sections[key].provider = provider

    def action(self, action: Action) -> None:
        if action.name in self.actions:
            raise ValueError(f"action {action.name!r} registered twice")
        if action.role != "operator":
            raise ValueError(f"action {action.name!r}: actions are for operators only")
        if action.section and action.section not in self.sections:
            raise KeyError(f"action {action.name!r}: no section {action.section!r}")
        self.actions[action.name] = action

    def load(self, modules: tuple[str, ...] | list[str], *, required: bool = False) -> list[str]:
        """Call ``register(self)`` of each module; returns those loaded. A built-in one that
        does not exist (yet) is skipped; `required` ones must load."""
        loaded = []
        for name in modules:
            try:
                module = importlib.import_module(name)
            except ModuleNotFoundError as exc:
                if required or not (exc.name and name.startswith(exc.name)):
                    raise
                continue
            register = getattr(module, "register", None)
            if register is None:
                if required:
                    raise AttributeError(f"{name} has no register(registry)")
                continue
            register(self)
            loaded.append(name)
            log.info("panel: %s registered its sections and actions", name)
        return loaded


def default_sections(registry: Registry) -> None:
    """The slots of the sections other modules fill."""
    registry.section(
        Section(
            "topup",
            {"zh-CN": "远程充值", "en": "Remote top-up"},
            {"zh-CN": "远程充值成功率", "en": "Remote top-up success rate"},
        )
    )
    registry.section(
        Section(
            "tariff",
            {"zh-CN": "电价执行", "en": "Tariff execution"},
            {"zh-CN": "电价执行正确率", "en": "Tariff execution accuracy"},
        )
    )
