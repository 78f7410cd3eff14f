"""Transitional alias: types of ``pipeline.kafka``, now ``pipeline.infra.kafka`` (pipeline/infra/moved.py)."""

from pipeline.infra.kafka import KafkaSetupError as KafkaSetupError
from pipeline.infra.kafka import admin as admin
from pipeline.infra.kafka import consumer_config as consumer_config
