"""Reelgen: text-to-video generation as a service."""
