"""The model store: models on disk as safetensors with a manifest of hashes (manifest), built
offline from recipes (generate), checked before use (integrity), corrupted on purpose by the
failure runners (corrupt), and served with backup and rebuild fallbacks (store).

Nothing here imports Dagster; the worker and the host both use it.
"""
