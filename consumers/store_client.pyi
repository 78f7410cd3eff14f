"""Transitional alias: types of ``consumers.store_client``, now ``cli.store_client`` (pipeline/infra/moved.py)."""

from cli.store_client import StoreClient as StoreClient
from cli.store_client import StoreHttpError as StoreHttpError
from cli.store_client import StoreUnreachableError as StoreUnreachableError
