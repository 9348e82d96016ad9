"""The Celery runtime: the consumer and its transport fixes, batching, metrics, logs, the
embedded Redis, the rules cache and health figures."""
