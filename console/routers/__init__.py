"""One router per section of the console (FastAPI's "bigger applications" layout); ``console.app`` wires them."""
