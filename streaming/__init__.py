"""The streaming stage: changes from Kafka to windowed features on the Spark workers, into both stores."""
