"""The Faust stream worker. `app.py` is the only module that imports Faust."""
