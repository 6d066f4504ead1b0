"""Sources: podcast RSS feeds and YouTube channels/playlists, downloaded into raw_audio/ (no Dagster here)."""
