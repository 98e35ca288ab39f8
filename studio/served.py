"""Serving the studio to a team: sign-in, the data root, hub access and the model-work queue size.

Run by one person on their own machine, the studio trusts its user: a local path or hub id loads
as typed. Served to others (``DELIFT_DATA_ROOT`` set), everything a page takes is untrusted input:
local paths load only from inside the data root (after symlinks and ``..`` are resolved), hub ids
only when ``DELIFT_ALLOW_HUB=1``, and with an ``[auth]`` section in ``.streamlit/secrets.toml``
every page needs a signed-in user on the allow-list (Streamlit's ``st.login``, OpenID Connect).

Each setting is read from the environment or, failing that, from a ``[delift]`` section of
``.streamlit/secrets.toml`` (lower-case names without the prefix: ``data_root``, ``allow_hub``,
``allowed_users``, ``model_jobs``, ``max_queued``); the environment wins.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import streamlit as st

from delift_core.data.formats import EXTENSIONS
from delift_core.errors import DeliftError
from delift_core.lm.models import packaged_embedder, packaged_model

__all__ = ["ServedSettings", "AccessRefused", "served_settings", "data_source", "model_source",
           "auth_configured", "require_sign_in", "user_allowed", "signed_in_user"]

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
"""A hub id a served studio takes: owner/name. A bare name is never one there: ``datasets``
reads ``text``, ``json``, ``csv`` or ``parquet`` as its own loaders over the server's working
folder."""


class AccessRefused(DeliftError):
    """A path, hub id or model the served studio does not let its users reach."""


@dataclass(frozen=True)
class ServedSettings:
    """How this server shares the studio (see the module docstring for where each comes from)."""

    data_root: Path | None = None
    """Served mode when set: local paths only inside this folder (resolved)."""
    allow_hub: bool = True
    """Hub datasets and models (default: on for a local run, off in served mode)."""
    allowed_users: tuple[str, ...] = ()
    """E-mail addresses and ``@domain`` entries that may sign in (empty: anyone the provider
    signs in)."""
    model_jobs: int = 1
    """Model jobs (utility kernels, evaluations) that run at once; the rest wait in a queue."""
    max_queued: int = 8
    """Model jobs that may wait at once; past it a new one is refused (a signed-in user has at
    most one model job at a time in any case: :class:`studio.jobs.JobRegistry`)."""

    @property
    def served(self) -> bool:
        return self.data_root is not None


def _secrets_section(name: str) -> dict[str, Any]:
    """A section of ``.streamlit/secrets.toml`` ({} when there is no file or no such section)."""
    try:
        section = st.secrets.get(name)
    except Exception:  # noqa: BLE001 - no secrets file: Streamlit raises its own error type
        return {}
    return dict(section) if section is not None else {}


def _flag(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise AccessRefused(f"{where} must be 1 or 0 (true or false), not {value!r}")


def served_settings() -> ServedSettings:
    """The serving settings of this process (environment first, then ``[delift]`` secrets)."""
    section = _secrets_section("delift")

    def get(name: str) -> Any:
        env = os.environ.get(f"DELIFT_{name.upper()}")
        return env if env is not None else section.get(name)

    root_text = get("data_root")
    root = None
    if root_text not in (None, ""):
        root = Path(os.path.realpath(Path(str(root_text)).expanduser()))
        if not root.is_dir():
            raise AccessRefused(f"the data root {root} (DELIFT_DATA_ROOT) is not a folder")
    hub = get("allow_hub")
    allow_hub = (root is None) if hub is None else _flag(hub, "DELIFT_ALLOW_HUB")
    users = get("allowed_users") or ()
    if isinstance(users, str):
        users = users.split(",")
    allowed = tuple(u.strip().lower() for u in users if str(u).strip())
    return ServedSettings(root, allow_hub, allowed, _count(get("model_jobs"), "MODEL_JOBS", 1),
                          _count(get("max_queued"), "MAX_QUEUED", 8))


def _count(text: Any, name: str, default: int) -> int:
    """A whole-number setting of at least 1 (``default`` when unset), refused by name otherwise."""
    try:
        value = default if text in (None, "") else int(text)
    except (TypeError, ValueError):
        value = 0
    if value < 1:
        raise AccessRefused(f"DELIFT_{name} must be a whole number of at least 1, not {text!r}")
    return value


def _inside(path: Path, root: Path, text: str) -> Path:
    """``path`` resolved (symlinks, ``..``), refused unless it and, for a folder, every file in
    it lie inside ``root``; the message names the root, never what the file holds."""
    real = Path(os.path.realpath(path))
    outside = AccessRefused(f"'{text}' is outside the data root {root}: this studio loads local "
                            "files only from inside that folder")
    if not real.is_relative_to(root):
        raise outside
    if not real.exists():
        raise AccessRefused(f"no file or folder '{text}' in the data root {root}")
    if real.is_dir():
        for folder, dirs, files in os.walk(real):
            for name in dirs + files:
                if not Path(os.path.realpath(Path(folder, name))).is_relative_to(root):
                    raise outside  # a link inside the folder that leads out of the root
    return real


def _local(text: str, root: Path) -> Path:
    if text.startswith("~"):
        raise AccessRefused(f"'{text}': home folders are not reachable in this studio; give a "
                            f"path inside the data root {root}")
    p = Path(text)
    return _inside(p if p.is_absolute() else root / p, root, text)


def _hub(text: str, what: str, settings: ServedSettings) -> str:
    if not settings.allow_hub:
        raise AccessRefused(f"'{text}' is not a file in the data root {settings.data_root}, and "
                            f"{what} from the Hugging Face hub are turned off on this server "
                            "(DELIFT_ALLOW_HUB)")
    if not _HUB_ID.match(text) or ".." in text or Path(text).exists():
        raise AccessRefused(f"'{text}' is neither a file in the data root {settings.data_root} "
                            "nor a hub id (owner/name)")
    return text


def _looks_local(text: str, root: Path, suffixes: tuple[str, ...] = ()) -> bool:
    """A path, not a hub id: it starts like one, ends in a data file's suffix or names
    something in the data root."""
    return (text.startswith((".", "/", "~", "\\")) or text.lower().endswith(suffixes)
            or os.path.lexists(root / text))


def _unusable(text: str, e: Exception) -> AccessRefused:
    """A name the file system cannot even look up (too long, a NUL byte): refused by name."""
    shown = text if len(text) <= 80 else text[:77] + "..."
    return AccessRefused(f"'{shown}' is not a path or hub id this studio can use "
                         f"({type(e).__name__}: {getattr(e, 'strerror', None) or e})")


def data_source(text: str, settings: ServedSettings | None = None) -> str:
    """What to load for a data source typed on a page: as typed on a local run; in served mode
    a demo name, a resolved path inside the data root, or an allowed hub id (AccessRefused)."""
    settings = settings or served_settings()
    text = text.strip()
    if settings.data_root is None or text.startswith("demo:"):
        return text
    try:
        return _served_data_source(text, settings)
    except (OSError, ValueError) as e:
        raise _unusable(text, e) from None


def _served_data_source(text: str, settings: ServedSettings) -> str:
    assert settings.data_root is not None
    if _looks_local(text, settings.data_root, tuple(EXTENSIONS)) or not _HUB_ID.match(text):
        return str(_local(text, settings.data_root))
    return _hub(text, "datasets", settings)


def model_source(text: str | None, *, embedder: bool = False,
                 settings: ServedSettings | None = None) -> str | None:
    """A model (or sentence embedder) name typed on a page, checked like :func:`data_source`:
    the packaged models always, a local folder inside the data root, a hub id when allowed."""
    settings = settings or served_settings()
    text = (text or "").strip()
    if not text or settings.data_root is None:
        return text or None
    try:
        return _served_model_source(text, embedder, settings)
    except (OSError, ValueError) as e:
        raise _unusable(text, e) from None


def _served_model_source(text: str, embedder: bool, settings: ServedSettings) -> str:
    assert settings.data_root is not None
    if (packaged_embedder(text) if embedder else packaged_model(text) is not None) \
            and not os.path.lexists(settings.data_root / text):
        return text
    if _looks_local(text, settings.data_root) or not _HUB_ID.match(text):
        return str(_local(text, settings.data_root))
    return _hub(text, "models", settings)


# ------------------------------------------------------------------------------------------
# Sign-in


def auth_configured() -> bool:
    """Whether ``.streamlit/secrets.toml`` has an ``[auth]`` section (then sign-in is required)."""
    return bool(_secrets_section("auth"))


def user_allowed(email: str | None, allowed: tuple[str, ...]) -> bool:
    """Whether ``email`` is on the allow-list (an address, or ``@domain``); an empty list allows
    every signed-in user."""
    if not allowed:
        return True
    email = (email or "").strip().lower()
    if "@" not in email:
        return False
    domain = "@" + email.rsplit("@", 1)[1]
    return email in allowed or domain in allowed


def signed_in_user() -> str | None:
    """The signed-in user's address when sign-in is configured and the provider verified it
    (whose decisions file and model job it is); None otherwise."""
    if not auth_configured() or not st.user.is_logged_in:
        return None
    email = str(st.user.get("email") or "")
    return email if email and st.user.get("email_verified") is not False else None


def _signed_in_and_allowed() -> tuple[bool, str]:
    """(signed in and on the allow-list, the user's e-mail)."""
    if not st.user.is_logged_in:
        return False, ""
    email = str(st.user.get("email") or "")
    if st.user.get("email_verified") is False:  # anyone can claim an address the provider
        return False, email  # did not check: never on the allow-list, never its owner's files
    return user_allowed(email, served_settings().allowed_users), email


def _sign_in_screen() -> None:
    st.title("DELIFT Studio")
    if not st.user.is_logged_in:
        st.write("This studio is shared: sign in to use it.")
        st.button("Sign in", type="primary", on_click=st.login, key="_sign_in")
        return
    email = str(st.user.get("email") or "")
    if st.user.get("email_verified") is False:
        st.error(f"The sign-in provider has not verified {email or 'this account'}'s address: "
                 "verify it with the provider, then sign in again.")
    else:
        st.error(f"{email or 'This account'} is not allowed to use this studio. Ask its "
                 "administrator to add the address or its domain to DELIFT_ALLOWED_USERS.")
    st.button("Sign out", on_click=st.logout, key="_sign_out_refused")


def require_sign_in(entry: bool = True) -> None:
    """With sign-in configured: nothing but the sign-in screen until a user on the allow-list
    signs in (``entry``: from app.py, where the screen is the only page of the navigation, so no
    page is listed or reachable by URL); then the user's name and a sign-out in the sidebar.
    Pages call it too (``entry=False``: stop without a screen), so none runs for a visitor even
    if it is ever run without app.py. Without ``[auth]``: nothing."""
    if not auth_configured():
        return
    ok, email = _signed_in_and_allowed()
    if not ok:
        if entry:
            st.navigation([st.Page(_sign_in_screen, title="Sign in", default=True)],
                          position="hidden").run()
        st.stop()
    if entry:
        with st.sidebar:
            st.caption(f"Signed in as {st.user.get('name') or email} ({email})")
            st.button("Sign out", on_click=st.logout, key="_sign_out")
