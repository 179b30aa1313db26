"""WeChat's HTTP APIs (WeCom; the Official Account next): tokens, errcodes, limits.

Knows nothing of the college; imports only `core`."""
