"""Operations: the CLI, the demo, the local stack and the workload, over every stage."""
