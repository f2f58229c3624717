"""An agent's start-up, before it serves: the node's root, key, credential, trust, journal.

:func:`set_up_node` prepares the layout, removes what a crash left
half-done, loads the node key, enrolls if the node has no credential yet
(with ``--join``), loads the trusted keys and reconciles the journal with
``current``. Everything that keeps the agent from starting is an
:class:`~knightwatch.agent.errors.AgentSetupError` (exit 2) that says what
to do instead.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass

from knightwatch.agent.enroll import (
    Credential,
    check_trust_anchor,
    enroll,
    load_credential,
    load_trusted_keys,
    pinned_keys,
    save_credential,
    save_trusted_keys,
)
from knightwatch.agent.errors import AgentSetupError
from knightwatch.agent.events import event
from knightwatch.agent.journal import Journal, reconcile
from knightwatch.agent.layout import NodeLayout
from knightwatch.agent.sdkcopy import install_sdk
from knightwatch.agent.settings import AgentSettings
from knightwatch.bundle.signing import TrustedKey
from knightwatch.protocol.reports import NodeKey, load_node_key

__all__ = ["NodeIdentity", "set_up_node"]


@dataclass(frozen=True)
class NodeIdentity:
    """What a set-up node proves itself with and trusts: its key, credential, signing keys."""

    key: NodeKey
    credential: Credential
    trusted: list[TrustedKey]


def set_up_node(
    settings: AgentSettings,
    layout: NodeLayout,
    journal: Journal,
    *,
    verify: ssl.SSLContext | bool,
) -> NodeIdentity:
    """Prepare the node for serving; raise AgentSetupError when the agent cannot start.

    ``verify`` is how the control plane's certificate is checked (enrollment).
    """
    _prepare_root(settings, layout)
    key = _load_key(layout)
    credential = _credential(settings, layout, key, verify)
    trusted = load_trusted_keys(layout, list(settings.trust))
    if not trusted:
        event("no-trusted-keys", hint="every prepare will fail; give --trust KEY")
    journal.load()
    state = reconcile(journal.state, layout)
    if settings.service_port is not None:
        state = state.model_copy(update={"service_port": settings.service_port})
    journal.save(state)
    event(
        "agent-start",
        node=settings.name,
        root=str(settings.root),
        current=state.current,
        previous=state.previous,
        staged=len(state.staged),
        trusted_keys=len(trusted),
    )
    return NodeIdentity(key, credential, trusted)


def _prepare_root(settings: AgentSettings, layout: NodeLayout) -> None:
    try:
        layout.ensure()
        removed = layout.clean_leftovers()
        install_sdk(layout)
        layout.evaluations_dir.mkdir(mode=0o755, exist_ok=True)
    except OSError as exc:
        raise AgentSetupError(
            f"cannot use {settings.root} as the agent root: {exc.strerror or exc}",
            hint="give --root a writable directory",
        ) from exc
    if removed:
        event("leftovers-removed", names=removed)


def _load_key(layout: NodeLayout) -> NodeKey:
    try:
        return load_node_key(layout.node_key_file)
    except (OSError, ValueError) as exc:
        raise AgentSetupError(
            f"cannot load the node key {layout.node_key_file}: {exc}",
            hint="restore it from a backup, or remove it and enroll the node again",
        ) from exc


def _credential(
    settings: AgentSettings, layout: NodeLayout, key: NodeKey, verify: ssl.SSLContext | bool
) -> Credential:
    """The node's saved credential, or a new one from enrolling with ``--join``."""
    credential = load_credential(layout)
    if credential is not None:
        if credential.node != settings.name:
            raise AgentSetupError(
                f"{layout.credential_file} belongs to node {credential.node!r}, "
                f"not {settings.name!r}",
                hint="use the node's own --name, or another --root",
            )
        return credential
    if not settings.join:
        raise AgentSetupError(
            f"this node has not joined {settings.server} yet",
            hint="give --join TOKEN (from the control plane operator) on the first start",
        )
    check_trust_anchor(settings.trust, settings.trust_fingerprints)
    answer = enroll(settings.server, settings.name, settings.join, key, verify=verify)
    pinned: list[str] = []
    if not settings.trust:
        pinned = pinned_keys(settings.server, answer.trusted_keys, settings.trust_fingerprints)
    credential = Credential(node=answer.node, credential=answer.credential)
    save_credential(layout, credential)
    if pinned:
        saved = save_trusted_keys(layout, pinned)
        event("trusted-keys-saved", count=len(saved), source="enrollment, pinned")
    event("enrolled", node=answer.node, server=settings.server)
    return credential
