"""The one base class for errors a user can cause (bad config, bad audio, unreachable teacher).

The CLI renders a UserError as one clear line and exits 2; anything else is a bug and keeps
its traceback.
"""


class UserError(ValueError):
    """A problem in the user's input; the message names the key, file or model concerned."""
