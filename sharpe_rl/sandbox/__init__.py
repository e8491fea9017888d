"""Running generated experiments: executors, the result contract and the error taxonomy.

`runner.SandboxRunner` is the entry point. This package module stays light (the taxonomy in
`contract` is imported everywhere); it only defines the one exception the pipeline retries.
"""


class InfrastructureError(RuntimeError):
    """The sandbox itself could not run (no engine, image missing, engine API error).

    Never raised for a failing experiment: that is an ExecutionResult with an error class.
    The message says what to do next.
    """
