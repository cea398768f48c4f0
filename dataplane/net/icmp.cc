#include "dataplane/net/icmp.hh"

#include "dataplane/net/checksum.hh"
#include "dataplane/net/detail/wire.hh"

#include <cstring>

namespace apprelay::net {

icmp_status classify_icmp(std::span<const std::byte> msg) noexcept {
    if (msg.size() < k_icmp_header || csum(msg) != 0) {
        return icmp_status::bad;
    }
    if (detail::load8(msg.data()) == k_icmp_echo_request && detail::load8(msg.data() + 1) == 0) {
        return icmp_status::echo_request;
    }
    return icmp_status::other;
}

void write_echo_reply(std::byte* out, std::span<const std::byte> request) noexcept {
    std::memcpy(out, request.data(), request.size());
    detail::store8(out, k_icmp_echo_reply);
    detail::store16(out + 2, 0);
    detail::store16(out + 2, csum(std::span<const std::byte>(out, request.size())));
}

} // namespace apprelay::net
