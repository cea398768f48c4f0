#pragma once
// HOST:PORT -> a socket address, for the connect() of io::loop. HOST is an IPv4 or IPv6 literal
// ([::1] or ::1) or a name; names are resolved with getaddrinfo, which may block: call it off the
// data path (start-up, the control thread, a tunnel's dial).
#include <string>
#include <sys/socket.h>

namespace apprelay::io {

// False when hp is not HOST:PORT or HOST does not resolve; the first address otherwise.
bool resolve_host_port(const std::string& hp, sockaddr_storage* ss, socklen_t* len);

} // namespace apprelay::io
