"""lenx: length-extrapolation experiments for positional encodings."""

from lenx.runid import register_resolvers

register_resolvers()
