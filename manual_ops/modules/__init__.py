"""One module per layer family; manual_ops.nn re-exports them."""
