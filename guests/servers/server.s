# server.s - the server kernel: kernel.s built with -D SERVER (see README.md in this directory).
#
#   popek run guests/servers/server.s --mem 4M                     # iterative, every service
#   popek run guests/servers/server.s --mem 4M -D CONCURRENT       # a dispatcher and workers
#   popek run guests/servers/server.s --mem 4M -D SERVICES=5       # echo and primes only
#   popek run guests/servers/server.s --mem 4M -D PARAVIRT --monitor pv
#
# It boots, starts its services and waits for requests on the network card; `popek run` alone returns once it
# waits (nothing to deliver). Requests come from the host's API (popek.vmm.host.Host.send) or `popek demo`.

.equ SERVER, 1
.include "../kernel/kernel.s"
