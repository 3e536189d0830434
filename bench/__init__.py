"""The open benchmark (make bench): every key of docs/semantics.md#benchmark-keys."""
