"""Transitional alias: types of ``consumers.usage_command``, now ``cli.usage_command`` (pipeline/infra/moved.py)."""

from cli.usage_command import OnWait as OnWait
from cli.usage_command import StoreBusyError as StoreBusyError
from cli.usage_command import open_client as open_client
from cli.usage_command import reach_store as reach_store
from cli.usage_command import store_client as store_client
