"""Run configs (ml_collections files; each has ``get_config(arg)``). See configs/README.md."""
