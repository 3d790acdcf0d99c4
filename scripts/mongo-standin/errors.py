"""The error a command answers with: MongoDB's code, message and code name."""


class CommandError(Exception):
    def __init__(self, code, message, name=None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.name = name


# The codes the stand-in answers with, by the names the server gives them.
DOCUMENT_VALIDATION_FAILURE = 121
INVALID_RESUME_TOKEN = 260
CHANGE_STREAM_HISTORY_LOST = 286
COMMAND_NOT_SUPPORTED = 115
