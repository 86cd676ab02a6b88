"""User-facing errors: the CLI prints them as one line and exits 2; they never become tracebacks."""


class UserError(Exception):
    """A problem with the user's input (file, flag, model, data), stated so the user can fix it."""


class UnsupportedOps(UserError):
    """Every unsupported op of a model at once, by type and node name."""

    def __init__(self, path: str, ops: dict[str, list[str]]):
        self.ops = ops
        listing = "; ".join(f"{t} ({', '.join(names[:5])}{', ...' if len(names) > 5 else ''})"
                            for t, names in sorted(ops.items()))
        super().__init__(f"{path}: {sum(map(len, ops.values()))} node(s) of {len(ops)} unsupported op type(s): "
                         f"{listing}")
