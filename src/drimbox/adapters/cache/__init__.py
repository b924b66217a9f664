"""Disk caches of the Source: instances pulled from the site's PACS, served to other sites."""

from drimbox.adapters.cache.instance_cache import CacheStats, InstanceCache

__all__ = ["CacheStats", "InstanceCache"]
