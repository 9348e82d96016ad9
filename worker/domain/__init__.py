"""The domain: the event contract, the rules, the decision and the timeline.

Pure: nothing here imports SQLAlchemy, Celery or the other layers, or reads a clock."""
