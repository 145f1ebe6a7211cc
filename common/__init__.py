"""Shared configuration of the listing classifier platform: typed params, state layout, scoring."""
