"""The Billing console: one FastAPI application, served by uvicorn in the store process.

The factory is ``app.py`` (it lists the routers), one router per section under ``routers/``, auth and
CSRF in ``deps.py``. How to add a section: docs/console-development.md; the routes: docs/interfaces.md.
"""
