"""Adapters that expose crdtstore through other projects' APIs (tooz, asyncio)."""
