#include "dataplane/io/address.hh"

#include <cstring>
#include <netdb.h>

namespace apprelay::io {

bool resolve_host_port(const std::string& hp, sockaddr_storage* ss, socklen_t* len) {
    auto c = hp.rfind(':');
    if (c == std::string::npos || c == 0) {
        return false;
    }
    std::string host = hp.substr(0, c);
    std::string port = hp.substr(c + 1);
    if (host.size() > 2 && host.front() == '[' && host.back() == ']') {
        host = host.substr(1, host.size() - 2);
    }
    addrinfo hints{};
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV;
    addrinfo* res = nullptr;
    if (getaddrinfo(host.c_str(), port.c_str(), &hints, &res) != 0 || res == nullptr) {
        return false;
    }
    std::memcpy(ss, res->ai_addr, res->ai_addrlen);
    *len = res->ai_addrlen;
    freeaddrinfo(res);
    return true;
}

} // namespace apprelay::io
