"""Reading the kernel into an ObservedState (the same shape as the desired state)."""
