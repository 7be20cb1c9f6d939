"""Limits shared across processes and hosts, kept in Redis (or Valkey).

::

    import redis
    import allotment
    from allotment.redis import RedisBackend

    shared = RedisBackend(redis.Redis(unix_socket_path=path), lease_ttl=30)
    gpus = allotment.ResourceManager({"gpu": 16}, name="cluster:gpus", backend=shared)
    api = allotment.RateLimiter(500, per=60, name="api:openai", backend=shared)

Installed with ``pip install "allotment[redis]"``; ``import allotment`` never imports this.
"""

from . import _group  # noqa: F401 - acquire_all's one round trip, registered on import
from ._backend import RedisBackend

__all__ = ["RedisBackend"]
