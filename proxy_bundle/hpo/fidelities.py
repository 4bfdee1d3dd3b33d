"""The (phase-1, full) fidelities of a search from its proxy mode, shared by ``hpo`` and the bundles' searches."""

from __future__ import annotations

from proxy_bundle.defaults import SHORT_FRACTION
from proxy_bundle.errors import InputError
from proxy_bundle.hpo.runners import Fidelity
from proxy_bundle.options import PROXY_MODES

__all__ = ["build_fidelities"]


def build_fidelities(proxy: str, datalist: str | None, width: float, blocks: float, levels: int | None,
                     epochs: int | None, proxy_epochs: int | None, template_epochs: int | None = None,
                     where: tuple[str, str, str] = ("--proxy", "--proxy_epochs", "--epochs"),
                     ) -> tuple[Fidelity, Fidelity]:
    """(phase-1 fidelity, full fidelity) for a ``--proxy`` mode.

    ``proxy``: none, data (``datalist``: the proxy datalist), network (``width``/``blocks``/``levels``), both, or
    short: the full data and network for ``proxy_epochs`` (default: ``SHORT_FRACTION`` of the full run's epochs,
    ``epochs`` or else ``template_epochs``, the template's own). ``where`` names the settings in errors (mode,
    proxy epochs, epochs). Raises
    :class:`InputError` for an unknown mode, or when short training would not be shorter or its length is unknown.
    """
    if proxy not in PROXY_MODES:
        raise InputError(f"unknown proxy mode {proxy!r}; use one of {list(PROXY_MODES)}", where=where[0])
    full = Fidelity("full", epochs=epochs)
    p_epochs = proxy_epochs if proxy_epochs is not None else epochs
    if proxy == "none":
        return full, full
    if proxy == "short":
        n_full = epochs if epochs is not None else template_epochs
        if proxy_epochs is None:
            if n_full is None:
                raise InputError("--proxy short needs --proxy_epochs (or --epochs): the template's number of "
                                 "epochs could not be read", where=where[1])
            p_epochs = max(1, round(int(n_full) * SHORT_FRACTION))
        if n_full is not None and p_epochs >= int(n_full):
            if proxy_epochs is None:
                raise InputError(f"--proxy short needs a full run of at least 2 epochs to shorten, got {n_full}",
                                 where=where[2] if epochs is not None else where[1])
            raise InputError(f"short training must be shorter than the full run ({n_full} epochs), got {p_epochs}",
                             where=where[1])
        return Fidelity("proxy-short", epochs=int(p_epochs)), full
    use_data, use_net = proxy in ("data", "both"), proxy in ("network", "both")
    return Fidelity(f"proxy-{proxy}", datalist=datalist if use_data else None,
                    width=width if use_net else 1.0, blocks=blocks if use_net else 1.0,
                    levels=levels if use_net else None, epochs=p_epochs), full
