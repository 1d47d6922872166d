"""Watch mode's observation cache (state/cache.py) on its own: what take()
hands a reconcile. The kernel side is in test_cache_property.py."""

from __future__ import annotations

from reconciler.resources import Netns
from reconciler.state.cache import ObservedCache
from reconciler.state.observe import Foreign, ObservedState


def test_a_full_read_opens_every_name_read_before_anew() -> None:
    """A name of /run/netns may lead to another namespace now although no event
    said so (it was lost): a resync, which reads everything, must not read it
    through the socket kept from the old namespace."""
    cache = ObservedCache()
    assert cache.take() == (None, frozenset())  # nothing read yet: nothing to forget
    web = Netns("web")
    cache.store(ObservedState({web.key: web}, Foreign(netns=frozenset({"other"}))))
    cache.netns_entry("db")
    assert cache.take()[1] == frozenset({"db"})  # marks only: the name that changed
    cache.everything()
    assert cache.take() == (None, frozenset({"web", "other"}))
