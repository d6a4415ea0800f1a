from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser


class JSONObjectParser(JSONParser):
    """JSON bodies, which are always objects in this API: a list, string, number or null
    at the top is refused with 400 here, before a view reads fields from it."""

    def parse(self, stream, media_type=None, parser_context=None):
        data = super().parse(stream, media_type, parser_context)
        if not isinstance(data, dict):
            raise ParseError("Send a JSON object ({…}) as the request body.")
        return data
