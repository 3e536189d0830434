"""The foundation: settings, errors, the feature declaration, the row contracts and the pure codecs (decoder, Feast
layout), the aggregation core (engine) and the I/O factories (PostgreSQL, Redis, Kafka, Spark). It imports no stage."""
