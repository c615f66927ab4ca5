"""Loopback servers that speak vendors' wire protocols, for the providers' real SDKs."""
