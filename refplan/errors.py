"""The one exception type the CLI turns into a one-line message and exit code 2."""


class PlanError(ValueError):
    """Bad input: names the flag, file or key the user must change.

    ``where`` is the flag (``--seq``), file (``config.json``) or key the message is about; the CLI
    prints ``refplan: <where>: <message>`` and exits with code 2.
    """

    def __init__(self, where: str, message: str):
        super().__init__(f"{where}: {message}")
        self.where = where
        self.message = message
