"""The Airflow provider for streamwatch: a `streamwatch` connection type
(`hooks.StreamwatchHook`), `operators.StreamwatchStartWatchOperator`, and
`sensors.StreamwatchWatchSensor`, which waits for a watch's completion by
polling GetWatch or, deferrable, in the triggerer with
`triggers.StreamwatchTrigger`. Airflow finds it through the
`apache_airflow_provider` entry point, which names `get_provider_info`.
"""

from __future__ import annotations

from typing import Any, Dict


def get_provider_info() -> Dict[str, Any]:
    return {
        "package-name": "streamwatch",
        "name": "streamwatch",
        "description": "Wait until a data set has landed in a bucket, with a streamwatch server.",
        "integrations": [
            {"integration-name": "streamwatch", "tags": ["service"]},
        ],
        "operators": [
            {"integration-name": "streamwatch", "python-modules": ["streamwatch.airflow.operators"]},
        ],
        "sensors": [
            {"integration-name": "streamwatch", "python-modules": ["streamwatch.airflow.sensors"]},
        ],
        "triggers": [
            {"integration-name": "streamwatch", "python-modules": ["streamwatch.airflow.triggers"]},
        ],
        "hooks": [
            {"integration-name": "streamwatch", "python-modules": ["streamwatch.airflow.hooks"]},
        ],
        "connection-types": [
            {
                "hook-class-name": "streamwatch.airflow.hooks.StreamwatchHook",
                "connection-type": "streamwatch",
            }
        ],
    }
