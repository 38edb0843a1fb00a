"""export: merged model -> GGUF -> quantized + measured -> bundle -> board."""
from campus_guide.errors import UserError


class ExportError(UserError):
    """Converting, quantizing, bundling or flashing failed; the message says what to do next."""
