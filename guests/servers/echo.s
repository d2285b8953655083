# echo.s - the echo service (port 7): the reply is the request's payload, byte for byte. Stateless.

echo_handle:                        # r2 = payload, r3 = length: the reply is the same bytes
    ret
