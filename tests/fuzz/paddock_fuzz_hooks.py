"""schemathesis hooks of tests/api_fuzz.rs.

Header values with control characters are not HTTP: the daemon's HTTP
parser (hyper) refuses them before any of Paddock's code runs, and closes
the connection. Such cases test the parser, not the API, so they are not
generated. Every other negative case (bad values, wrong types, missing or
extra fields, oversized strings) still is.
"""

import schemathesis


def _is_http(value):
    return all(0x20 <= ord(c) < 0x7F or c == "\t" for c in str(value))


@schemathesis.hook
def filter_headers(ctx, headers):
    return headers is None or all(_is_http(v) for v in headers.values())
